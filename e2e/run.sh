#!/usr/bin/env bash
# mailvault end to end, on a kind cluster: builds the image, installs manifests/ (with the
# image overridden as users would), deploys Dovecot, OpenLDAP and Garage from public
# images, seeds mail and users, and checks what the resources report:
#   - a scheduled run archives every mailbox of an LDAP-synced MailboxSet into a claim;
#   - status.lastRun shows the protocol's totals;
#   - a manual trigger (spec.trigger.manual) archives what is new, and a re-run nothing;
#   - a wrong password shows up as a failed mailbox and LastRunSucceeded=False;
#   - deleting a profile deletes its Jobs and keeps the archive (verified from a pod);
#   - the same into S3 (Garage), when the installed CRDs have spec.store.s3.
#
# Needs docker, kind and kubectl. Creates the cluster $E2E_CLUSTER (default mailvault-e2e)
# and deletes it on exit unless E2E_KEEP=1. KIND_NODE_IMAGE picks the Kubernetes version.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=${E2E_CLUSTER:-mailvault-e2e}
IMAGE=mailvault:e2e
MANIFESTS=$ROOT/e2e/manifests
created=0

log() { printf '\n== %s\n' "$*"; }
fail() {
  echo "e2e: FAILED: $*" >&2
  exit 1
}
k() { kubectl --context "kind-$CLUSTER" "$@"; }

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 3 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after $1 s waiting for $what"
    sleep 3
  done
}

# field KIND NAME JSONPATH: one field of an object in the namespace "mail".
field() { k -n mail get "$1" "$2" -o jsonpath="$3"; }
field_is() { [[ "$(field "$1" "$2" "$3")" == "$4" ]]; }
expect() {
  local got
  got=$(field "$1" "$2" "$3")
  [[ "$got" == "$4" ]] || fail "$1/$2 $3: expected '$4', got '$got'"
  echo "ok: $1/$2 $3 = $4"
}

diagnose() {
  echo "---- diagnostics" >&2
  k get pods -A -o wide || true
  k -n mail get archiveprofiles,mailboxsets -o yaml || true
  k -n mail get jobs,pods,pvc -o wide || true
  k -n mail get events --sort-by=.metadata.creationTimestamp || true
  k -n mailvault-system logs deploy/mailvault-operator --tail=300 || true
  for pod in $(k -n mail get pods -o name 2>/dev/null); do
    echo "---- $pod" >&2
    k -n mail logs "$pod" --tail=100 || true
  done
}

on_exit() {
  local code=$?
  if ((created)); then
    ((code == 0)) || diagnose
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
      echo "keeping the cluster: kind delete cluster --name $CLUSTER"
    else
      kind delete cluster --name "$CLUSTER" || true
    fi
  fi
  ((code == 0)) && echo "e2e: passed" || echo "e2e: failed ($code)" >&2
}
trap on_exit EXIT

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker info >/dev/null 2>&1 || fail "docker is not running"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  fail "a kind cluster $CLUSTER exists already; delete it or set E2E_CLUSTER"
fi

log "cluster $CLUSTER"
created=1
kind create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

log "image $IMAGE"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "install (kubectl apply -k, image overridden)"
k apply -k "$MANIFESTS/operator"
k wait --for=condition=Established --timeout=60s \
  crd/archiveprofiles.mailvault.io crd/mailboxsets.mailvault.io
k -n mailvault-system rollout status deploy/mailvault-operator --timeout=180s
worker_image=$(k -n mailvault-system get deploy/mailvault-operator \
  -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="MAILVAULT_WORKER_IMAGE")].value}')
[[ $worker_image == "$IMAGE" ]] || fail "MAILVAULT_WORKER_IMAGE is '$worker_image', not $IMAGE"

log "servers: Dovecot and OpenLDAP"
k apply -f "$MANIFESTS/servers/namespace.yaml"
k apply -f "$MANIFESTS/servers/dovecot.yaml" -f "$MANIFESTS/servers/openldap.yaml"
k -n e2e-servers rollout status deploy/dovecot --timeout=180s
k -n e2e-servers rollout status deploy/openldap --timeout=180s

log "seed the directory: alice, bob and carol"
people() {
  printf 'dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n\n'
  for user in alice bob carol; do
    printf 'dn: uid=%s,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\n' "$user"
    printf 'uid: %s\ncn: %s\nsn: Example\nmail: %s@example.org\n\n' "$user" "$user" "$user"
  done
}
ldap_add() {
  people | k -n e2e-servers exec -i deploy/openldap -- \
    ldapadd -x -H ldap://localhost -D cn=admin,dc=example,dc=org -w admin-pw
}
# slapd restarts once while the image sets it up.
wait_for 120 "OpenLDAP to take the users" ldap_add

log "seed mail"
# seed USER FOLDER COUNT FIRST: COUNT distinct messages, numbered from FIRST.
seed() {
  local user=$1 folder=$2 count=$3 first=$4 i
  if [[ $folder != INBOX ]]; then
    k -n e2e-servers exec deploy/dovecot -- doveadm mailbox create -u "$user" "$folder" 2>/dev/null || true
  fi
  for ((i = first; i < first + count; i++)); do
    printf 'From: sender@example.net\r\nTo: %s\r\nSubject: e2e %s %s %d\r\nDate: Mon, 06 Jan 2025 10:00:00 +0000\r\nMessage-ID: <e2e-%s-%s-%d@example.net>\r\n\r\nMessage %d for %s in %s.\r\n' \
      "$user" "$user" "$folder" "$i" "$user" "$folder" "$i" "$i" "$user" "$folder" |
      k -n e2e-servers exec -i deploy/dovecot -- doveadm save -u "$user" -m "$folder"
  done
}
seed alice@example.org INBOX 3 1
seed alice@example.org Projects 2 1
seed bob@example.org INBOX 2 1
seed carol@example.org INBOX 1 1 # 8 messages in all

log "resources in the namespace mail (Pod Security Standard: restricted)"
k apply -f "$MANIFESTS/mail/namespace.yaml"
k apply -f "$MANIFESTS/mail/staff.yaml"
# One scheduled run, in one to two minutes: the schedule then next fires a day later, so
# that it cannot get in the way of the manual runs below.
slot=$(date -u -d '+2 minutes' '+%M %H')
k -n mail patch archiveprofile staff --type merge \
  -p "{\"spec\":{\"schedule\":{\"cron\":\"$slot * * *\",\"timeZone\":\"UTC\"}}}"
wait_for 120 "MailboxSet staff to sync the directory" field_is mailboxset staff '{.status.mailboxes}' 3
k -n mail wait --for=condition=DirectorySynced=True --timeout=60s mailboxset/staff

log "a scheduled run"
wait_for 300 "the scheduled run" field_is archiveprofile staff '{.status.lastRun.result}' Succeeded
run=$(field archiveprofile staff '{.status.lastRun.name}')
[[ $run == staff-2* ]] || fail "the first run, $run, is not a scheduled one"
expect archiveprofile staff '{.status.lastRun.totals.mailboxes}' 3
expect archiveprofile staff '{.status.lastRun.totals.mailboxesFailed}' 0
expect archiveprofile staff '{.status.lastRun.totals.archived}' 8
expect archiveprofile staff '{.status.lastRun.totals.alreadyArchived}' 0
k -n mail wait --for=condition=LastRunSucceeded=True --timeout=30s archiveprofile/staff
k -n mail get archiveprofiles

log "a manual trigger archives what is new"
seed carol@example.org INBOX 2 2
k -n mail patch archiveprofile staff --type merge -p '{"spec":{"trigger":{"manual":"more"}}}'
wait_for 300 "the manual run" field_is archiveprofile staff '{.status.lastRun.name}' staff-m-more
expect archiveprofile staff '{.status.lastRun.result}' Succeeded
expect archiveprofile staff '{.status.lastRun.totals.archived}' 2
expect archiveprofile staff '{.status.lastRun.totals.alreadyArchived}' 8
expect archiveprofile staff '{.status.lastManualTrigger}' more

log "a re-run archives nothing new"
k -n mail patch archiveprofile staff --type merge -p '{"spec":{"trigger":{"manual":"again"}}}'
wait_for 300 "the re-run" field_is archiveprofile staff '{.status.lastRun.name}' staff-m-again
expect archiveprofile staff '{.status.lastRun.result}' Succeeded
expect archiveprofile staff '{.status.lastRun.totals.archived}' 0
expect archiveprofile staff '{.status.lastRun.totals.alreadyArchived}' 10

log "a wrong password fails its mailbox"
k apply -f "$MANIFESTS/mail/wrong-password.yaml"
k -n mail patch archiveprofile wrong-password --type merge -p '{"spec":{"trigger":{"manual":"go"}}}'
wait_for 300 "the run with a wrong password" \
  field_is archiveprofile wrong-password '{.status.lastRun.name}' wrong-password-m-go
expect archiveprofile wrong-password '{.status.lastRun.result}' PartiallyFailed
expect archiveprofile wrong-password '{.status.lastRun.totals.mailboxesFailed}' 1
expect archiveprofile wrong-password '{.status.lastRun.totals.archived}' 5
expect archiveprofile wrong-password '{.status.lastRun.failedMailboxes[0].mailbox}' bob@example.org
k -n mail wait --for=condition=LastRunSucceeded=False --timeout=30s archiveprofile/wrong-password

# run_pod NAME ARGS...: runs `mailvault ARGS` in the namespace mail with the claim at
# /archive (and $POD_ENV as its env), prints its output, fails unless it succeeds.
run_pod() {
  local name=$1 args
  shift
  args=$(printf '"%s",' "$@")
  k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: mail}
spec:
  restartPolicy: Never
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: mailvault
      image: $IMAGE
      args: [${args%,}]
      env: ${POD_ENV:-[]}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts: [{name: archive, mountPath: /archive}]
  volumes: [{name: archive, persistentVolumeClaim: {claimName: mail-archive}}]
EOF
  pod_done() { [[ $(field pod "$name" '{.status.phase}') =~ ^(Succeeded|Failed)$ ]]; }
  wait_for 180 "pod $name" pod_done
  k -n mail logs "$name"
  [[ $(field pod "$name" '{.status.phase}') == Succeeded ]] || fail "mailvault $* failed in pod $name"
}

log "deleting a profile deletes its Jobs and keeps the archive"
k -n mail delete archiveprofile staff --wait --timeout=60s
no_jobs() { [[ -z $(k -n mail get jobs -l mailvault.io/profile=staff -o name) ]]; }
wait_for 120 "the Jobs of profile staff to go" no_jobs
run_pod verify-staff verify --store /archive/staff
listing=$(run_pod list-staff list --store /archive/staff)
echo "$listing"
for user in alice bob carol; do
  grep -q "$user" <<<"$listing" || fail "the archive lost $user: $listing"
done

s3_type=$(k get crd archiveprofiles.mailvault.io -o \
  jsonpath='{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.store.properties.s3.type}')
if [[ $s3_type != object ]]; then
  echo "e2e: S3 phase skipped: the installed CRDs have no spec.store.s3"
  exit 0
fi

log "S3: Garage"
k apply -f "$MANIFESTS/servers/garage.yaml"
k -n e2e-servers rollout status deploy/garage --timeout=180s
k apply -f "$MANIFESTS/s3/profile.yaml"
k -n mail patch archiveprofile staff-s3 --type merge -p '{"spec":{"trigger":{"manual":"s3"}}}'
wait_for 300 "the run into S3" field_is archiveprofile staff-s3 '{.status.lastRun.name}' staff-s3-m-s3
expect archiveprofile staff-s3 '{.status.lastRun.result}' Succeeded
expect archiveprofile staff-s3 '{.status.lastRun.totals.archived}' 10
k -n mail delete archiveprofile staff-s3 --wait --timeout=60s
POD_ENV='[{name: AWS_ACCESS_KEY_ID, valueFrom: {secretKeyRef: {name: garage-credentials, key: accessKeyId}}},
          {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: garage-credentials, key: secretAccessKey}}}]'
POD_ENV=$POD_ENV run_pod verify-s3 verify --store s3://mailvault/staff \
  --s3-endpoint http://garage.e2e-servers.svc.cluster.local:3900 --s3-region garage --s3-path-style
