-- Argo CD resource action "run-now" for mailvault.io/v1alpha1 ArchiveProfile: sets
-- spec.trigger.manual to the current time (UTC, RFC 3339). The operator starts a run for
-- every new value; two clicks within one second ask for one run.
-- Argo CD runs actions with Lua's base and table libraries and os.date/os.time.
if type(obj.spec) ~= "table" then
  obj.spec = {}
end
if type(obj.spec.trigger) ~= "table" then
  obj.spec.trigger = {}
end
obj.spec.trigger.manual = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
