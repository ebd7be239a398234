-- post: POST a 1 KiB JSON body to the webhooks list with the write token. Args: token.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

function init(args)
   wrk.method = "POST"
   wrk.path = "/adyen/management/merchants/M123/webhooks"
   wrk.body = '{"data":"' .. string.rep("x", 1024 - 11) .. '"}'
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. args[1]
end
