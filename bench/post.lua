-- POST callbacks as Tencent CI would, with the receiver's token; each one a different job,
-- so the workers route every one instead of skipping duplicates.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local template = f:read("*a")
f:close()
local sample_job = "j707f4864f86811ecb90d0b03267ce0e5"
local sent = 0
-- Each wrk run gets its own prefix from the benchmark, so no two runs send the same job.
local prefix = os.getenv("BENCH_RUN_ID")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/xml"
wrk.headers["X-Callback-Token"] = os.getenv("BENCH_TOKEN")

function request()
  sent = sent + 1
  local job = string.format("j%s%020d", prefix, sent)
  return wrk.format(nil, nil, nil, (template:gsub(sample_job, job)))
end

