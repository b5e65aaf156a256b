#!/usr/bin/env bash
# One-command smoke test against a real AWS account (costs ~1 USD):
#   AWS_REGION=eu-west-1 terraform/environments/aws/smoke.sh    (or: make terraform-aws-smoke)
# Builds the wheel, creates the four SecureString parameters (secret, one token per role) if missing, applies
# the environment, runs the Locust load test on the master through SSM, prints
# its SLO summary, and destroys everything (also on failure or Ctrl-C).
# Needs: terraform, the AWS CLI with credentials, network access to the registry.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
region=${AWS_REGION:?set AWS_REGION}
name=${RAFTQ_SMOKE_NAME:-raftq-smoke}
case "${TF_CLI_CONFIG_FILE:-}" in
  *"/terraform/.tools/"*) echo "smoke: TF_CLI_CONFIG_FILE points at the offline schema-only provider; unset it" >&2; exit 1 ;;
esac

(cd "$repo" && rm -rf dist && python3 -m pip wheel -q --no-deps -w dist . && rm -rf build)
wheel=$(ls "$repo"/dist/raftq-*.whl)

for p in secret producer-token worker-token admin-token; do
  if ! aws ssm get-parameter --region "$region" --name "/$name/$p" >/dev/null 2>&1; then
    aws ssm put-parameter --region "$region" --name "/$name/$p" --type SecureString \
      --value "$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" >/dev/null
    echo "smoke: created SSM parameter /$name/$p"
  fi
done

tf() { terraform -chdir="$here" "$@"; }
vars=(-var "region=$region" -var "name=$name" -var "wheel_path=$wheel")
cleanup() { echo "smoke: destroying"; tf destroy -auto-approve -input=false "${vars[@]}"; }
trap cleanup EXIT

tf init -input=false
tf apply -auto-approve -input=false "${vars[@]}"
master=$(tf output -json load_generator_instance_ids | python3 -c 'import json,sys; print(json.load(sys.stdin)["loadgen-1"])')

echo "smoke: waiting for the load generator to register with SSM and finish its first boot"
for _ in $(seq 60); do
  state=$(aws ssm describe-instance-information --region "$region" \
    --filters "Key=InstanceIds,Values=$master" --query 'InstanceInformationList[0].PingStatus' --output text)
  [ "$state" = "Online" ] && break
  sleep 10
done
[ "$state" = "Online" ] || { echo "smoke: $master never came online in SSM" >&2; exit 1; }

id=$(aws ssm send-command --region "$region" --instance-ids "$master" --document-name AWS-RunShellScript \
  --comment raftq-smoke --timeout-seconds 900 \
  --parameters 'commands=["cloud-init status --wait >/dev/null; systemctl start --wait raftq-loadtest.service; rc=$?; journalctl -u raftq-loadtest -o cat | grep -E \"^(SLO| +Aggregated)\"; exit $rc"]' \
  --query Command.CommandId --output text)
aws ssm wait command-executed --region "$region" --command-id "$id" --instance-id "$master" || true
aws ssm get-command-invocation --region "$region" --command-id "$id" --instance-id "$master" \
  --query '[Status,StandardOutputContent,StandardErrorContent]' --output text
status=$(aws ssm get-command-invocation --region "$region" --command-id "$id" --instance-id "$master" \
  --query Status --output text)
[ "$status" = "Success" ] && echo "smoke: passed" || { echo "smoke: the load test failed ($status)" >&2; exit 1; }
