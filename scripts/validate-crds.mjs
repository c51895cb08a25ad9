// Validates the custom resources the Helm chart renders (cert-manager
// Certificate and Issuer, Prometheus Operator ServiceMonitor), which
// kubernetes-validate has no schemas for. The schemas come from the npm
// packages @kubernetes-models/cert-manager and
// @kubernetes-models/prometheus-operator, generated from those projects' Go
// API types. They check required fields, types, enums and patterns; they do
// not reject unknown fields.
//
// Usage: node scripts/validate-crds.mjs <node_modules dir> < resources.json
// where resources.json is a JSON array of {"source": ..., "resource": {...}}.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: validate-crds.mjs <node_modules dir> < resources.json");
  process.exit(2);
}
const packages = {
  "cert-manager.io/v1": "@kubernetes-models/cert-manager/cert-manager.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};

let failed = 0;
for (const { source, resource } of JSON.parse(readFileSync(0, "utf8"))) {
  const what = `${source}: ${resource.kind}/${resource.metadata?.name}`;
  const pkg = packages[resource.apiVersion];
  if (!pkg) {
    console.log(`ERROR ${what}: no schema for apiVersion ${resource.apiVersion}; add its models package`);
    failed++;
    continue;
  }
  let Model;
  try {
    Model = (await import(pathToFileURL(join(modules, pkg, `${resource.kind}.js`)).href))[resource.kind];
  } catch (e) {
    console.log(`ERROR ${what}: no model for kind ${resource.kind} in ${pkg}: ${e.message}`);
    failed++;
    continue;
  }
  try {
    new Model(resource).validate();
    console.log(`OK    ${what} (${resource.apiVersion})`);
  } catch (e) {
    console.log(`ERROR ${what}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
