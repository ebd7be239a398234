-- refused: a third each of no token (401), the read token on POST (403) and an unknown
-- path (404). Args: read token.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

local webhooks = "/adyen/management/merchants/M123/webhooks"
local unknown = "/adyen/management/merchants/M123/secrets"
local requests = {}
local counter = 0

function init(args)
   local body = '{"data":"' .. string.rep("x", 1024 - 11) .. '"}'
   requests[1] = wrk.format("GET", webhooks, {})
   requests[2] = wrk.format("POST", webhooks, {["Authorization"] = "Bearer " .. args[1], ["Content-Type"] = "application/json"}, body)
   requests[3] = wrk.format("GET", unknown, {["Authorization"] = "Bearer " .. args[1]})
end

function request()
   counter = counter + 1
   return requests[counter % 3 + 1]
end
