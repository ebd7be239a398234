-- path: one request, the same each time (the rules, grants and graphql workloads).
-- Args: token, path, and optionally a method and a JSON body.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

function init(args)
   -- no request() function: wrk builds this request once and sends it as is
   wrk.method = args[3] or "GET"
   wrk.path = args[2]
   wrk.headers["Authorization"] = "Bearer " .. args[1]
   if args[4] then
      wrk.body = args[4]
      wrk.headers["Content-Type"] = "application/json"
   end
end
