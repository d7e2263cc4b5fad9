#!/usr/bin/env bash
# Writes the data of argocd-cm-patch.yaml from the Lua scripts beside it (its comment header
# stays): the health checks of both kinds, the ArchiveProfile actions, and the difference
# Argo CD ignores. operator/tests/argocd_health.rs fails while the patch and the scripts
# differ.
set -euo pipefail
cd "$(dirname "$0")"

# Indents every non-empty line of a file by $1 (a YAML block scalar keeps empty lines).
indent() { sed "s/^./$1&/" "$2"; }

{
  sed -n '1,/^data:$/p' argocd-cm-patch.yaml
  for kind in ArchiveProfile MailboxSet; do
    echo "  resource.customizations.health.mailvault.io_$kind: |"
    indent '    ' "health/$kind.lua"
  done
  echo "  resource.customizations.actions.mailvault.io_ArchiveProfile: |"
  echo "    discovery.lua: |"
  indent '      ' actions/ArchiveProfile/discovery.lua
  echo "    definitions:"
  for action in actions/ArchiveProfile/*/action.lua; do
    echo "      - name: $(basename "$(dirname "$action")")"
    echo "        action.lua: |"
    indent '          ' "$action"
  done
  echo "  resource.customizations.ignoreDifferences.mailvault.io_ArchiveProfile: |"
  echo "    jsonPointers:"
  echo "      - /spec/trigger"
} >argocd-cm-patch.yaml.new
mv argocd-cm-patch.yaml.new argocd-cm-patch.yaml
