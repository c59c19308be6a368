-- Runs health-inbox.lua against sample Inboxes: lua5.4 test_health.lua (from this directory).
local function health(o)
  obj = o
  return dofile("health-inbox.lua")
end
local function cond(t, s, r, m) return { type = t, status = s, reason = r, message = m } end
local function inbox(gen, observed, conds)
  return { metadata = { generation = gen }, status = { observedGeneration = observed, conditions = conds } }
end
local cases = {
  { "no status", { metadata = { generation = 1 } }, "Progressing" },
  { "ready", inbox(1, 1, { cond("Ready", "True", "Ready", "ok"), cond("Stalled", "False", "UpToDate", "") }), "Healthy" },
  { "stale generation", inbox(2, 1, { cond("Ready", "True", "Ready", "ok") }), "Progressing" },
  { "stalled", inbox(1, 1, { cond("Ready", "False", "Rejected", "address taken"), cond("Stalled", "True", "Rejected", "address taken") }), "Degraded" },
  { "paused", inbox(1, 1, { cond("Ready", "False", "Paused", "paused"), cond("Stalled", "False", "Paused", "") }), "Suspended" },
  { "creating", inbox(1, 1, { cond("Ready", "False", "Creating", "creating"), cond("Reconciling", "True", "Creating", "") }), "Progressing" },
}
local failed = 0
for _, c in ipairs(cases) do
  local hs = health(c[2])
  if hs.status ~= c[3] then
    print("FAIL " .. c[1] .. ": got " .. hs.status .. ", want " .. c[3])
    failed = failed + 1
  end
end
if failed > 0 then os.exit(1) end
print(#cases .. " passed, 0 failed")
