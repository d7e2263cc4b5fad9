-- Argo CD health check for mailvault.io/v1alpha1 ArchiveProfile.
-- Argo CD runs custom health scripts with Lua's base and table libraries only (no string,
-- no math) and hands the object in as `obj`; everything here copes with missing fields.
-- A running archive job does not make the profile Progressing: nightly runs would make the
-- application flap.
local hs = {}

local function asTable(v)
  if type(v) == "table" then
    return v
  end
  return {}
end

local function asNumber(v)
  if type(v) == "number" then
    return v
  end
  if type(v) == "string" then
    return tonumber(v)
  end
  return nil
end

local function asText(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil
end

local function findCondition(status, kind)
  for _, c in ipairs(asTable(status.conditions)) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

-- "reason: message", or whichever of the two is there, or the fallback.
local function describe(c, fallback)
  local reason = asText(c.reason)
  local message = asText(c.message)
  if reason ~= nil and message ~= nil then
    return reason .. ": " .. message
  end
  return reason or message or fallback
end

local o = asTable(obj)
local metadata = asTable(o.metadata)
local spec = asTable(o.spec)
local status = asTable(o.status)

local generation = asNumber(metadata.generation)
local observed = asNumber(status.observedGeneration)
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. generation
  else
    hs.message = "Waiting for the operator to observe the resource"
  end
  return hs
end

local stalled = findCondition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local ready = findCondition(status, "Ready")
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

-- "; run NAME in progress (120/400 mailboxes)" while a run is active, added to the messages
-- below: a run's progress is visible without making the profile Progressing.
local running = ""
if type(status.activeRun) == "table" then
  local activeRunName = asText(status.activeRun.name)
  if activeRunName ~= nil then
    running = "; run " .. activeRunName .. " in progress"
  else
    running = "; a run is in progress"
  end
  local progress = asText(status.activeRun.progress)
  if progress ~= nil then
    running = running .. " (" .. progress .. ")"
  end
end

local lastRun = asTable(status.lastRun)
local lastRunName = asText(lastRun.name)
local lastRunTitle = "Last run"
if lastRunName ~= nil then
  lastRunTitle = lastRunTitle .. " " .. lastRunName
end
local lastRunSucceeded = findCondition(status, "LastRunSucceeded")
if lastRunSucceeded ~= nil and lastRunSucceeded.status == "False" then
  hs.status = "Degraded"
  hs.message = lastRunTitle .. ": " .. describe(lastRunSucceeded, "Failed") .. running
  return hs
end

if asTable(spec.schedule).suspend == true then
  hs.status = "Suspended"
  hs.message = "Schedule suspended" .. running
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Ready condition"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Waiting for Ready condition")
  return hs
end

local message = "No run yet"
if type(status.lastRun) == "table" then
  message = lastRunTitle
  if lastRunSucceeded ~= nil and lastRunSucceeded.status == "True" then
    message = message .. " succeeded"
  end
  local archived = asNumber(asTable(lastRun.totals).archived)
  if archived ~= nil then
    message = message .. ": " .. archived .. " archived"
  end
end
hs.status = "Healthy"
hs.message = message .. running
return hs
