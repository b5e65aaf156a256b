"""terraform-provider-aws, schema only: serves hashicorp/aws's published schema
and nothing else, so `terraform validate` and `terraform test` with
`mock_provider "aws"` run on a machine that cannot download the real plugin.

    RAFTQ_AWS_SCHEMA=aws-schema.json.gz python provider.py     (started by Terraform)

The plugin protocol (go-plugin handshake, gRPC, tfplugin6) is the `tf`
package's; this file swaps in a servicer that answers from the schema JSON
written by extract.py. Validation calls succeed (Terraform itself checks
every configuration against the schema). Everything that would need AWS --
configuring the provider, planning, reading, applying, importing -- fails
with an error diagnostic saying so, so a real `terraform plan` against this
provider fails loudly instead of planning against nothing.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

import tf.provider
from tf.gen import tfplugin_pb2 as pb
from tf.runner import run_provider

SCHEMA_ONLY = ("schema-only AWS provider: this is not hashicorp/aws",
               "This plugin serves the published hashicorp/aws schema for `terraform validate` and "
               "`terraform test` with mock_provider \"aws\" (CI, offline). It cannot reach AWS. For a real "
               "plan or apply, remove the dev_overrides / filesystem-mirror entry for hashicorp/aws from "
               "your Terraform CLI configuration and run `terraform init`.")
NESTING = {"single": pb.Schema.NestedBlock.SINGLE, "list": pb.Schema.NestedBlock.LIST,
           "set": pb.Schema.NestedBlock.SET, "map": pb.Schema.NestedBlock.MAP}


def block_pb(block: dict[str, Any]) -> pb.Schema.Block:
    return pb.Schema.Block(
        attributes=[
            pb.Schema.Attribute(name=name, type=json.dumps(a["type"]).encode(), required=a.get("required", False),
                                optional=a.get("optional", False), computed=a.get("computed", False),
                                sensitive=a.get("sensitive", False))
            for name, a in sorted(block.get("attributes", {}).items())
        ],
        block_types=[
            pb.Schema.NestedBlock(type_name=name, block=block_pb(b["block"]), nesting=NESTING[b["nesting_mode"]],
                                  min_items=b.get("min_items", 0), max_items=b.get("max_items", 0))
            for name, b in sorted(block.get("block_types", {}).items())
        ],
    )


def schema_pb(entry: dict[str, Any]) -> pb.Schema:
    return pb.Schema(version=entry.get("version", 0), block=block_pb(entry["block"]))


def refusal() -> list[pb.Diagnostic]:
    return [pb.Diagnostic(severity=pb.Diagnostic.ERROR, summary=SCHEMA_ONLY[0], detail=SCHEMA_ONLY[1])]


class SchemaOnlyServicer(tf.provider.ProviderServicer):
    """Answers GetProviderSchema from the JSON; refuses every call that needs AWS."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._schema: pb.GetProviderSchema.Response | None = None

    def GetMetadata(self, request: Any, context: Any) -> pb.GetMetadata.Response:
        return pb.GetMetadata.Response(server_capabilities=pb.ServerCapabilities(plan_destroy=True))

    def GetProviderSchema(self, request: Any, context: Any) -> pb.GetProviderSchema.Response:
        if self._schema is None:
            with gzip.open(os.environ.get("RAFTQ_AWS_SCHEMA", Path(__file__).with_name("aws-schema.json.gz")), "rt") as f:
                data = json.load(f)
            self._schema = pb.GetProviderSchema.Response(
                provider=schema_pb(data["provider"]),
                provider_meta=pb.Schema(block=pb.Schema.Block()),
                resource_schemas={k: schema_pb(v) for k, v in data["resource_schemas"].items()},
                data_source_schemas={k: schema_pb(v) for k, v in data["data_source_schemas"].items()},
            )
        return self._schema

    def ValidateProviderConfig(self, request: Any, context: Any) -> pb.ValidateProviderConfig.Response:
        return pb.ValidateProviderConfig.Response()

    def ValidateResourceConfig(self, request: Any, context: Any) -> pb.ValidateResourceConfig.Response:
        return pb.ValidateResourceConfig.Response()

    def ValidateDataResourceConfig(self, request: Any, context: Any) -> pb.ValidateDataResourceConfig.Response:
        return pb.ValidateDataResourceConfig.Response()

    def ConfigureProvider(self, request: Any, context: Any) -> pb.ConfigureProvider.Response:
        return pb.ConfigureProvider.Response(diagnostics=refusal())

    def UpgradeResourceState(self, request: Any, context: Any) -> pb.UpgradeResourceState.Response:
        return pb.UpgradeResourceState.Response(diagnostics=refusal())

    def ReadResource(self, request: Any, context: Any) -> pb.ReadResource.Response:
        return pb.ReadResource.Response(diagnostics=refusal())

    def PlanResourceChange(self, request: Any, context: Any) -> pb.PlanResourceChange.Response:
        return pb.PlanResourceChange.Response(diagnostics=refusal())

    def ApplyResourceChange(self, request: Any, context: Any) -> pb.ApplyResourceChange.Response:
        return pb.ApplyResourceChange.Response(diagnostics=refusal())

    def ImportResourceState(self, request: Any, context: Any) -> pb.ImportResourceState.Response:
        return pb.ImportResourceState.Response(diagnostics=refusal())

    def ReadDataSource(self, request: Any, context: Any) -> pb.ReadDataSource.Response:
        return pb.ReadDataSource.Response(diagnostics=refusal())


class SchemaOnlyProvider:
    """What tf.runner needs of a provider object: its name (the rest is the servicer's)."""

    def full_name(self) -> str:
        return "registry.terraform.io/hashicorp/aws"


if __name__ == "__main__":
    # tf.runner builds its servicer from this module attribute at call time.
    tf.provider.ProviderServicer = SchemaOnlyServicer  # type: ignore[misc]
    run_provider(SchemaOnlyProvider(), sys.argv)  # type: ignore[arg-type]
