-- forward_auth: the decision listener alone, asked as Traefik and Caddy ask it: GET /forward-auth
-- with the original request in X-Forwarded-Method and X-Forwarded-Uri and the caller's token.
-- Args: "get" or "refused", read token, webhooks path, unknown path.
-- get: the webhooks list with the read token (200, the identity headers); refused: a third each
-- of no token (401), the read token on POST (403) and an unknown path (404), as refused.lua.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local requests = {}
local counter = 0

local function ask(method, uri, token)
   local headers = {["X-Forwarded-Method"] = method, ["X-Forwarded-Uri"] = uri, ["X-Forwarded-Host"] = "api.bench"}
   if token then headers["Authorization"] = "Bearer " .. token end
   return wrk.format("GET", "/forward-auth", headers)
end

function init(args)
   if args[1] == "get" then
      requests[1] = ask("GET", args[3], args[2])
   else
      requests[1] = ask("GET", args[3], nil)
      requests[2] = ask("POST", args[3], args[2])
      requests[3] = ask("GET", args[4], args[2])
   end
end

function request()
   counter = counter + 1
   return requests[counter % #requests + 1]
end
