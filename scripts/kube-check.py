"""The properties the Kubernetes manifests must keep, asserted on each
overlay as `kubectl kustomize` renders it (called by scripts/kube-check.sh).

Usage: kube-check.py RENDERED_DIR CONFIG_DIR CRATE_VERSION REPO_MAPPINGS

RENDERED_DIR holds NAME.yaml per overlay. Each idsync config found in an
overlay's ConfigMap is written to CONFIG_DIR/NAME/ (with the image's mapping
folder pointed at the repository's), for `idsync validate`. Prints one line
per problem and exits 1 if there is any.
"""

import os
import sys

import yaml

IMAGE = "ghcr.io/idsync/idsync"
UID = 10001
FAILED_AT_ONCE = {2, 3, 6, 7}
IMAGE_MAPPINGS = "/usr/share/idsync/mappings/"

problems = []


def problem(overlay, what):
    problems.append(f"{overlay}: {what}")


def pod_spec(doc):
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def check_cronjob(overlay, doc):
    spec = doc["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        problem(overlay, "the CronJob's concurrencyPolicy is not Forbid")
    if not spec.get("startingDeadlineSeconds"):
        problem(overlay, "the CronJob has no startingDeadlineSeconds")
    job = spec["jobTemplate"]["spec"]
    if job.get("backoffLimit") != 0:
        problem(overlay, "the Job's backoffLimit is not 0 (the schedule is the retry)")
    rules = job.get("podFailurePolicy", {}).get("rules", [])
    ignores_disruption = any(
        r["action"] == "Ignore"
        and any(c.get("type") == "DisruptionTarget" for c in r.get("onPodConditions", []))
        for r in rules
    )
    if not ignores_disruption:
        problem(overlay, "a disrupted pod (DisruptionTarget) is not ignored by the podFailurePolicy")
    failed = set()
    for r in rules:
        codes = r.get("onExitCodes")
        if r["action"] == "FailJob" and codes and codes.get("operator") == "In":
            failed |= set(codes.get("values", []))
        if r["action"] == "Ignore" and codes:
            problem(overlay, f"exit codes {codes.get('values')} are Ignored: the Job would rerun them in a loop")
    if failed != FAILED_AT_ONCE:
        problem(overlay, f"the podFailurePolicy fails the Job at once on {sorted(failed)}, not {sorted(FAILED_AT_ONCE)}")
    if pod_spec(doc).get("restartPolicy") != "Never":
        problem(overlay, "the Job's pods do not have restartPolicy Never")


def listen_port(container):
    args = container.get("args", [])
    if "--metrics-listen" not in args:
        return None
    return int(args[args.index("--metrics-listen") + 1].rsplit(":", 1)[1])


def check_deployment(overlay, doc, services):
    spec = doc["spec"]
    if spec.get("replicas") != 1:
        problem(overlay, "the Deployment's replicas is not 1 (one writer per state DB)")
    if spec.get("strategy", {}).get("type") != "Recreate":
        problem(overlay, "the Deployment's strategy is not Recreate")
    container = pod_spec(doc)["containers"][0]
    port = listen_port(container)
    if port is None:
        problem(overlay, "the daemon has no --metrics-listen: its probes would find nothing")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or ports.get(get.get("port"), get.get("port")) != port:
            problem(overlay, f"the {probe} is not GET {path} on the --metrics-listen port")
    labels = doc["spec"]["template"]["metadata"]["labels"]
    scraped = [
        s for s in services
        if s["spec"].get("selector")
        and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
    ]
    if not scraped:
        problem(overlay, "no Service selects the daemon's pod for scraping")
    for s in scraped:
        if not s["spec"].get("publishNotReadyAddresses"):
            problem(overlay, "the metrics Service drops not-ready pods (scrapes stop when cycles fail)")


def check_pod(overlay, doc, crate_version):
    spec = pod_spec(doc)
    psc = spec.get("securityContext", {})
    for key, want in (("runAsNonRoot", True), ("runAsUser", UID), ("runAsGroup", UID), ("fsGroup", UID)):
        if psc.get(key) != want:
            problem(overlay, f"the pod's securityContext.{key} is not {want}")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(overlay, "the pod's seccompProfile is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problem(overlay, "the pod mounts a service account token it does not need")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(overlay, f"container {c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(overlay, f"container {c['name']}: readOnlyRootFilesystem is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problem(overlay, f"container {c['name']}: capabilities are not all dropped")
        if sc.get("privileged"):
            problem(overlay, f"container {c['name']}: privileged")
        if c.get("image") != f"{IMAGE}:{crate_version}":
            problem(overlay, f"container {c['name']}: image {c.get('image')}, not {IMAGE}:{crate_version} (the crate's version)")
        for env in c.get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                problem(overlay, f"container {c['name']}: a secret in the environment ({env['name']}); mount it as a file")
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                problem(overlay, f"container {c['name']}: a Secret as environment variables; mount it as files")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
            problem(overlay, f"container {c['name']}: no memory request and limit")
    return {m["mountPath"]: volumes[m["name"]] for c in spec["containers"] for m in c.get("volumeMounts", [])}


def check_mounts(overlay, mounts, pvcs, secrets, config):
    """The config's state DB on the claim (ReadWriteOnce), its credential
    files in the Secret volume and keys of that Secret, /tmp an emptyDir."""
    def mount_of(path):
        hits = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
        return max(hits, key=len) if hits else None

    state = mount_of(config.get("state", ""))
    claim = state and mounts[state].get("persistentVolumeClaim", {}).get("claimName")
    if not claim:
        problem(overlay, f"state: {config.get('state')} is not on a PersistentVolumeClaim")
    elif pvcs.get(claim, {}).get("spec", {}).get("accessModes") != ["ReadWriteOnce"]:
        problem(overlay, f"the claim {claim} is not ReadWriteOnce")
    if "emptyDir" not in mounts.get("/tmp", {}):
        problem(overlay, "/tmp is not an emptyDir (the root file system is read-only)")
    files = [config.get("target", {}).get("token_file"), config.get("source", {}).get("bind_password_file")]
    if config.get("target", {}).get("token_env") or config.get("source", {}).get("bind_password_env"):
        problem(overlay, "the config takes a secret from the environment; use *_file")
    for path in filter(None, files):
        mount = mount_of(path)
        secret = mount and mounts[mount].get("secret")
        if not secret:
            problem(overlay, f"{path} is not in a Secret volume")
            continue
        if secret.get("defaultMode") != 0o400:
            problem(overlay, f"the Secret volume's defaultMode is {secret.get('defaultMode')}, not 0400")
        doc = secrets.get(secret["secretName"], {})
        keys = set(doc.get("stringData", {})) | set(doc.get("data", {}))
        if os.path.basename(path) not in keys:
            problem(overlay, f"{path}: the Secret {secret['secretName']} has no key {os.path.basename(path)}")


def check_overlay(overlay, docs, config_dir, crate_version, repo_mappings):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = by_kind.get("CronJob", []) + by_kind.get("Deployment", [])
    if len(workloads) != 1:
        problem(overlay, f"{len(workloads)} workloads (a CronJob or a Deployment, one per directory)")
        return
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance"):
            if key not in labels:
                problem(overlay, f"{d['kind']} {d['metadata']['name']} has no {key} label")
    for s in by_kind.get("Secret", []):
        for key, value in s.get("stringData", {}).items():
            if not str(value).startswith("REPLACE-"):
                problem(overlay, f"Secret {s['metadata']['name']}: {key} holds a value, not a REPLACE- placeholder (never commit secrets)")
        if s.get("data"):
            problem(overlay, f"Secret {s['metadata']['name']}: data in the repository (use placeholders in stringData)")
    workload = workloads[0]
    if workload["kind"] == "CronJob":
        check_cronjob(overlay, workload)
    else:
        check_deployment(overlay, workload, by_kind.get("Service", []))
    mounts = check_pod(overlay, workload, crate_version)
    config_mount = [m for m, v in mounts.items() if "configMap" in v]
    maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    if len(config_mount) != 1 or config_mount[0] != "/etc/idsync":
        problem(overlay, "the config is not mounted from a ConfigMap at /etc/idsync")
        return
    cm = maps[mounts["/etc/idsync"]["configMap"]["name"]]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    pvcs = {p["metadata"]["name"]: p for p in by_kind.get("PersistentVolumeClaim", [])}
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    check_mounts(overlay, mounts, pvcs, secrets, config)
    folder = os.path.join(config_dir, overlay)
    os.makedirs(folder, exist_ok=True)
    for name, text in cm["data"].items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text.replace(IMAGE_MAPPINGS, repo_mappings.rstrip("/") + "/"))


def main():
    rendered, config_dir, crate_version, repo_mappings = sys.argv[1:5]
    names = sorted(n[:-5] for n in os.listdir(rendered) if n.endswith(".yaml"))
    for overlay in names:
        with open(os.path.join(rendered, overlay + ".yaml")) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        check_overlay(overlay, docs, config_dir, crate_version, repo_mappings)
    for p in problems:
        print(f"kube-check: {p}")
    print(f"kube-check: {len(names)} overlays checked, {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
