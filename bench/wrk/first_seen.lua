-- first_seen: GET the webhooks list, each request with a token from a file of distinct
-- pre-minted tokens. Args: tokens file, start position, number of threads, and "forward-auth" to
-- ask the decision listener about that GET instead (GET /forward-auth with X-Forwarded-*).
-- Thread i takes positions start+i, start+i+threads, ... (modulo the file's length), so the
-- threads never share a token and a token comes back only after the whole file went by; the
-- highest position reached is reported (next_token) so the next run starts past it.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local path = "/adyen/management/merchants/M123/webhooks"
local tokens = {}
local stride = 1
local position = 0
local decision = false

function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then tokens[#tokens + 1] = line end
   end
   stride = tonumber(args[3])
   decision = args[4] == "forward-auth"
   position = tonumber(args[2]) + thread_index
   cursor = position
end

function request()
   local token = tokens[position % #tokens + 1]
   position = position + stride
   cursor = position
   if decision then
      return wrk.format("GET", "/forward-auth", {["Authorization"] = "Bearer " .. token, ["X-Forwarded-Method"] = "GET",
                                                 ["X-Forwarded-Uri"] = path, ["X-Forwarded-Host"] = "api.bench"})
   end
   return wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
end
