#!/usr/bin/env bash
# Checks of the AWS deployment kit: cfn-lint on the CloudFormation template, then the lifecycle
# function's tests (moto stands in for AWS) and the template's own tests. Needs python3 (3.11+,
# with venv and pip) and PyPI; nothing else from the network. Exits non-zero if either fails.
#
#   deploy/ci.sh                      # from anywhere; .ci/run calls it
#   L4RELAY_BIN=path/to/l4relay deploy/ci.sh   # the binary that validates the rendered config
#                                               # (default: target/release, target/debug, PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "deploy/ci.sh: needs Python 3.11+ (tomllib), found $("$python" --version 2>&1)" >&2
  exit 1
fi

venv=$(mktemp -d "${TMPDIR:-/tmp}/l4relay-deploy-ci.XXXXXX")
trap 'rm -rf "$venv"' EXIT
if ! "$python" -m venv "$venv" >/dev/null; then
  echo "deploy/ci.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
  exit 1
fi

# cfn-lint: the newest release, no ceiling. Each release carries the AWS resource schemas and the
# Lambda runtimes' deprecation dates; a pinned or capped version would go on passing a template
# whose runtime AWS no longer lets anyone create. New findings from a new release are the point.
# The rest, one major version each: a new major may change mock behaviour under us.
# moto's ssm and elbv2 extras: the lifecycle function also drains over SSM and registers targets.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
  'cfn-lint>=1.58' \
  'moto[ec2,autoscaling,ssm,elbv2]==5.*' \
  'boto3==1.*' \
  'pytest==9.*'

# Nothing written into the tree: deploy/lambda/ is what `aws cloudformation package` zips.
export PYTHONDONTWRITEBYTECODE=1

status=0
echo "--- cfn-lint $("$venv/bin/cfn-lint" --version | awk '{print $2}') deploy/l4relay.yaml"
if "$venv/bin/cfn-lint" deploy/l4relay.yaml; then echo "no findings"; else status=1; fi
# What this cfn-lint knows of the function's runtime (test_template.py fails 180 days ahead).
"$venv/bin/python" deploy/test_template.py --runtime-dates || status=1

echo "--- pytest deploy/lambda deploy/test_template.py"
"$venv/bin/python" -m pytest -q -p no:cacheprovider deploy/lambda deploy/test_template.py || status=1

exit "$status"
