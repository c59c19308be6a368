-- Runs health-inbox.lua against sample Inboxes, and checks that README.md's argocd-cm
-- snippet is the same script. From this directory: lua5.1 test_health.lua
-- (Argo CD runs health checks in gopher-lua, which is Lua 5.1: this file and the check run
-- on Lua 5.1 through 5.4.)
local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("*a")
  f:close()
  return text
end

local script = read("health-inbox.lua")
local check = assert((loadstring or load)(script, "health-inbox.lua"))

local function health(o)
  obj = o -- Argo CD passes the resource as the global `obj`
  return check()
end

local function cond(t, s, r, m)
  return { type = t, status = s, reason = r, message = m }
end

local function inbox(gen, observed, conds, annotations)
  return {
    metadata = { name = "bot", generation = gen, annotations = annotations },
    status = { observedGeneration = observed, conditions = conds },
  }
end

local ready = cond("Ready", "True", "Ready", "support-bot@agentsend.io")
local not_stalled = cond("Stalled", "False", "Ready", "")

local cases = {
  { "no status", { metadata = { generation = 1 } }, "Progressing" },
  { "status without conditions", { metadata = { generation = 1 }, status = {} }, "Progressing" },
  { "no metadata at all", {}, "Progressing" },
  { "ready", inbox(1, 1, { ready, not_stalled }), "Healthy", "Ready: support-bot@agentsend.io" },
  { "ready, no observedGeneration", inbox(1, nil, { ready }), "Progressing" },
  { "ready for an older generation", inbox(2, 1, { ready, not_stalled }), "Progressing",
    "Waiting for the operator to observe generation 2" },
  { "stalled", inbox(1, 1, {
      cond("Ready", "False", "Rejected", "address taken"),
      cond("Stalled", "True", "Rejected", "address taken") }),
    "Degraded", "Rejected: address taken" },
  { "stalled without a message", inbox(1, 1, {
      cond("Ready", "False", "CredentialsMissing", nil),
      cond("Stalled", "True", "CredentialsMissing", nil) }),
    "Degraded", "CredentialsMissing" },
  { "paused (Ready reason)", inbox(1, 1, {
      cond("Ready", "False", "Paused", "paused by annotation"), not_stalled }),
    "Suspended", "Paused: paused by annotation" },
  { "paused (annotation), spec edited meanwhile", inbox(3, 1, { ready },
      { ["agentsend.io/paused"] = "true" }), "Suspended" },
  { "paused annotation other than true", inbox(1, 1, { ready, not_stalled },
      { ["agentsend.io/paused"] = "false" }), "Healthy" },
  { "creating", inbox(1, 1, {
      cond("Ready", "False", "Creating", "creating the inbox"),
      cond("Reconciling", "True", "Creating", ""),
      cond("Stalled", "False", "Creating", "") }),
    "Progressing", "Creating: creating the inbox" },
  { "api unavailable, retrying", inbox(1, 1, {
      cond("Ready", "False", "ApiUnavailable", "503"),
      cond("Stalled", "False", "ApiUnavailable", "") }),
    "Progressing" },
  { "deleting", inbox(1, 1, { cond("Ready", "False", "Deleting", "deleting the inbox") }),
    "Progressing" },
  { "ready unknown", inbox(1, 1, { cond("Ready", "Unknown", nil, nil) }), "Progressing" },
}

local passed, failed = 0, 0
local function expect(name, ok, detail)
  if ok then
    passed = passed + 1
  else
    failed = failed + 1
    print("FAIL " .. name .. ": " .. detail)
  end
end

for _, c in ipairs(cases) do
  local ok, hs = pcall(health, c[2])
  if not ok then
    expect(c[1], false, "error: " .. tostring(hs))
  else
    local good = hs.status == c[3] and (c[4] == nil or hs.message == c[4])
    expect(c[1], good, "got " .. tostring(hs.status) .. " (" .. tostring(hs.message) ..
      "), want " .. c[3] .. (c[4] and (" (" .. c[4] .. ")") or ""))
    expect(c[1] .. ": message is a string", type(hs.message) == "string", type(hs.message))
  end
end

-- README.md's argocd-cm snippet: the script, indented by four spaces.
local readme = read("README.md")
local key = "  resource.customizations.health.agentsend.io_Inbox: |\n"
local at = readme:find(key, 1, true)
if at == nil then
  expect("README snippet", false, "no argocd-cm snippet found")
else
  local block = {}
  for line in readme:sub(at + #key):gmatch("([^\n]*)\n") do
    if line:sub(1, 3) == "```" then break end
    if line == "" then
      block[#block + 1] = ""
    else
      block[#block + 1] = line:gsub("^    ", "", 1)
    end
  end
  local embedded = table.concat(block, "\n") .. "\n"
  expect("README snippet", embedded == script,
    "differs from health-inbox.lua; regenerate the block in README.md")
end

print(passed .. " passed, " .. failed .. " failed")
if failed > 0 then os.exit(1) end
