-- get: GET the webhooks list with the read token. Args: token.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

function init(args)
   -- no request() function: wrk builds this request once and sends it as is
   wrk.method = "GET"
   wrk.path = "/adyen/management/merchants/M123/webhooks"
   wrk.headers["Authorization"] = "Bearer " .. args[1]
end
