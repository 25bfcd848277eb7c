-- wrk script: POST the JSON body read from the file named by $BENCH_BODY to the URL's path.
-- Used by bench/run.py; each wrk thread runs this file in its own Lua state.
local f = assert(io.open(assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
