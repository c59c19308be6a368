-- Argo CD health check for agentsend.io/Inbox
-- (argocd-cm key resource.customizations.health.agentsend.io_Inbox; see README.md).
--   Suspended   paused: annotation agentsend.io/paused "true", or Ready reason Paused
--   Healthy     Ready=True, for the current generation
--   Degraded    Stalled=True (its reason and message)
--   Progressing otherwise: no status yet, spec not yet observed, creating, deleting, ...
local hs = { status = "Progressing", message = "Waiting for the operator" }

local meta = obj.metadata or {}
local annotations = meta.annotations or {}
if annotations["agentsend.io/paused"] == "true" then
  hs.status = "Suspended"
  hs.message = "Paused (annotation agentsend.io/paused)"
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local ready, stalled
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Stalled" then stalled = c end
end

local function describe(c, default)
  local text = c.reason or default
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if ready ~= nil and ready.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Paused")
  return hs
end

if meta.generation ~= nil and (obj.status.observedGeneration == nil
    or obj.status.observedGeneration < meta.generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(meta.generation)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil then
  hs.message = describe(ready, "NotReady")
end
return hs
