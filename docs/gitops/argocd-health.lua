-- Argo CD health check for wasmruntime.dev/WasmRuntime
-- (resource.customizations.health.wasmruntime.dev_WasmRuntime in argocd-cm).
--
-- The operator reports kstatus-style conditions: Ready, Progressing and Degraded, each with
-- observedGeneration. Order matters: a status older than the spec says nothing about the
-- spec yet; Degraded beats everything else; Ready=True is Healthy; anything else is still
-- rolling out. Tested with a real Lua 5.4 in tests/tests/chart.rs.
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function message(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason or ""
end
local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. message(degraded)
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready)
  return hs
end
local progressing = conditions["Progressing"]
hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = message(progressing)
elseif ready ~= nil then
  hs.message = message(ready)
else
  hs.message = "Waiting for the operator to report conditions"
end
return hs
