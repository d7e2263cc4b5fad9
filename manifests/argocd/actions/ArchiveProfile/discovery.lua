-- The Argo CD resource actions offered for mailvault.io/v1alpha1 ArchiveProfile.
-- A run asked for while another is active starts when that one has finished.
local actions = {}
actions["run-now"] = {
  ["displayName"] = "Run now",
  ["iconClass"] = "fa fa-fw fa-play",
}
return actions
