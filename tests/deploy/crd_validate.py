"""Validate custom resources against the openAPIV3Schema of their CustomResourceDefinitions.

Run by the interpreter of the kubernetes-validate tool (it has jsonschema and PyYAML; the project venv has no
jsonschema): ``python crd_validate.py CRD.yaml... -- RESOURCES.yaml``. Prints one line per problem; exit 1 if any.
"""

from __future__ import annotations

import sys

import jsonschema
import yaml


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused, as the API server's strict field validation does (a misspelt field
    would otherwise be pruned silently, not reported)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def schemas(crd_paths: list[str]) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → strict schema of every served version of the given CRDs."""
    found = {}
    for path in crd_paths:
        for crd in yaml.safe_load_all(open(path)):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    found[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return found


def main(argv: list[str]) -> int:
    split = argv.index("--")
    known = schemas(argv[:split])
    problems = []
    for path in argv[split + 1 :]:
        for resource in yaml.safe_load_all(open(path)):
            if not resource:
                continue
            key = (resource["apiVersion"], resource["kind"])
            if key not in known:
                continue
            name = f"{resource['kind']}/{resource['metadata']['name']}"
            for error in jsonschema.Draft7Validator(known[key]).iter_errors(resource):
                problems.append(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
            print(f"checked {name} against its CRD")
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
