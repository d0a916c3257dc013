-- Argo CD health check for an smtpinfra.com resource (Lua 5.1, as Argo CD runs it).
-- The operator reports Kubernetes-convention status: observedGeneration, Ready as the summary,
-- abnormal-true Reconciling and Stalled. A verdict is only given for the generation the
-- operator has observed; before that the resource is Progressing.
local hs = {}

local function condition(obj, condType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if generation ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local stalled = condition(obj, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

-- A campaign paused by spec.suspend is Suspended as soon as the operator observed that
-- generation, whether or not it reports a Suspended condition (or phase) of its own.
local suspended = condition(obj, "Suspended")
if (obj.spec ~= nil and obj.spec.suspend == true) or (suspended ~= nil and suspended.status == "True")
    or obj.status.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = text(suspended, "Campaign suspended (spec.suspend)")
  return hs
end

local ready = condition(obj, "Ready")
local reconciling = condition(obj, "Reconciling")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
if ready ~= nil and ready.status == "False" and (reconciling == nil or reconciling.status ~= "True") then
  hs.status = "Degraded"
  hs.message = text(ready, "Not ready")
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling, "Reconciling")
else
  hs.message = text(ready, "Waiting for Ready")
end
return hs
