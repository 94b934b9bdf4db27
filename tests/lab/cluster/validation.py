"""Pod update validation: what may change on a pod, and the ephemeral-container rules.

Mirrors ``ValidatePodUpdate`` and ``ValidatePodEphemeralContainersUpdate`` of the real
apiserver (messages copied from recordings 16–25):
- ephemeral container names are unique across containers, init and ephemeral containers
  (``spec.ephemeralContainers[3].name: Duplicate value: "app"``);
- ``targetContainerName`` must name a regular container;
- ports, resources, resizePolicy, probes and lifecycle are forbidden;
- existing ephemeral containers may be neither removed nor changed (note the trailing newline
  of "may not be removed\\n", and the diff after "may not be changed");
- a normal pod update may only change images, activeDeadlineSeconds, tolerations and the
  grace period — adding ``spec.ephemeralContainers`` that way is refused (recording 25).
The text of the diffs appended to "may not be changed" differs from Go's ``cmp.Diff``; the
first line of the message is exact.
"""

from __future__ import annotations

import copy
import difflib
import json
import re

from . import status as st

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_FORBIDDEN_EPHEMERAL = ("ports", "resources", "resizePolicy", "livenessProbe", "readinessProbe",
                        "startupProbe", "lifecycle")
POD_UPDATE_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def _diff(old, new) -> str:
    a = json.dumps(old, indent=1, sort_keys=True).splitlines()
    b = json.dumps(new, indent=1, sort_keys=True).splitlines()
    lines = [ln for ln in difflib.unified_diff(a, b, lineterm="", n=2)][2:]
    return "\n".join(lines) + "\n"


def _ephemeral_container_errors(pod: dict) -> list[tuple[str, str, str]]:
    spec = pod.get("spec") or {}
    regular = [c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
    seen = set(regular)
    errors = []
    for i, ec in enumerate(spec.get("ephemeralContainers") or []):
        path = f"spec.ephemeralContainers[{i}]"
        name = ec.get("name") or ""
        if not name:
            errors.append((f"{path}.name", "FieldValueRequired", "Required value"))
        elif not _DNS_LABEL.match(name) or len(name) > 63:
            errors.append((f"{path}.name", "FieldValueInvalid",
                           f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                           "alphanumeric characters or '-', and must start and end with an alphanumeric character "
                           "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                           "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"))
        if not ec.get("image"):
            errors.append((f"{path}.image", "FieldValueRequired", "Required value"))
        if name in seen:
            errors.append((f"{path}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        target = ec.get("targetContainerName")
        if target and target not in regular:
            errors.append((f"{path}.targetContainerName", "FieldValueNotFound", f'Not found: "{target}"'))
        for fld in _FORBIDDEN_EPHEMERAL:
            if ec.get(fld):
                errors.append((f"{path}.{fld}", "FieldValueForbidden", "Forbidden: cannot be set for an Ephemeral Container"))
    return errors


def ephemeral_update(old: dict, new: dict) -> None:
    """Raise the 422 of the real server for an invalid pods/ephemeralcontainers write."""
    errors = _ephemeral_container_errors(new)
    new_by_name = {c.get("name"): c for c in new["spec"].get("ephemeralContainers") or []}
    for oc in old["spec"].get("ephemeralContainers") or []:
        nc = new_by_name.get(oc.get("name"))
        if nc is None:
            detail = f'Forbidden: existing ephemeral containers "{oc.get("name")}" may not be removed\n'
            errors.append(("spec.ephemeralContainers", "FieldValueForbidden", detail))
        elif nc != oc:
            detail = f'Forbidden: existing ephemeral containers "{oc.get("name")}" may not be changed\n{_diff(oc, nc)}'
            errors.append(("spec.ephemeralContainers", "FieldValueForbidden", detail))
    if errors:
        raise st.invalid("Pod", old["metadata"]["name"], errors)


def _mutable_masked(spec: dict, old_spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            c.pop("image", None)
    spec.pop("activeDeadlineSeconds", None)
    spec.pop("terminationGracePeriodSeconds", None)
    tolerations = spec.pop("tolerations", None) or []
    old_tol = old_spec.get("tolerations") or []
    if all(t in tolerations for t in old_tol):
        spec["tolerations"] = "additions-only"
    else:
        spec["tolerations"] = tolerations
    return spec


def pod_update(old: dict, new: dict) -> None:
    """Raise 422 when a pod update changes an immutable part of the spec."""
    a = _mutable_masked(old.get("spec") or {}, old.get("spec") or {})
    b = _mutable_masked(new.get("spec") or {}, old.get("spec") or {})
    if a != b:
        detail = f"Forbidden: {POD_UPDATE_FORBIDDEN}\n{_diff(old.get('spec'), new.get('spec'))}"
        raise st.invalid("Pod", old["metadata"]["name"], [("spec", "FieldValueForbidden", detail)])
