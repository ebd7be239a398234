-- path: GET one path with one token (the rules and grants workloads). Args: token, path.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

function init(args)
   -- no request() function: wrk builds this request once and sends it as is
   wrk.method = "GET"
   wrk.path = args[2]
   wrk.headers["Authorization"] = "Bearer " .. args[1]
end
