#!/usr/bin/env node
// Validate custom resources (KEDA's ScaledObject and TriggerAuthentication, the Prometheus
// Operator's ServiceMonitor) with the validators @kubernetes-models generates from each
// project's published CRDs: types, required fields, enums and formats. Unknown fields are not
// rejected (a CRD's structural schema prunes them instead), and kinds without a validator are
// errors, never passes.
//
//   node scripts/validate-crds.mjs < documents.json
//
// Input: a JSON array of {"file": ..., "document": {...}}. Prints one line per document and
// exits 1 when any is invalid or unknown, 2 when the input cannot be read.

import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const MODELS = new Map(
  [ScaledObject, TriggerAuthentication, ServiceMonitor].map((model) => [
    `${model.apiVersion}/${model.kind}`,
    model,
  ]),
);

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function check({ file, document }) {
  const name = `${file}: ${document.kind}/${document.metadata?.name}`;
  const Model = MODELS.get(`${document.apiVersion}/${document.kind}`);
  if (Model === undefined) {
    return `error ${name}: no validator for ${document.apiVersion} ${document.kind}`;
  }
  try {
    new Model(document).validate();
  } catch (error) {
    return `error ${name}: ${error.message}`;
  }
  return `ok ${name}`;
}

async function main() {
  let entries;
  try {
    entries = JSON.parse(await readStdin());
  } catch (error) {
    console.error(`cannot read the documents: ${error.message}`);
    return 2;
  }
  const lines = entries.map(check);
  for (const line of lines) {
    console.log(line);
  }
  return lines.some((line) => line.startsWith("error")) ? 1 : 0;
}

process.exitCode = await main();
