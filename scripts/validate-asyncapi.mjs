#!/usr/bin/env node
// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
//
//   node scripts/validate-asyncapi.mjs asyncapi.yaml
//   provisioner asyncapi | node scripts/validate-asyncapi.mjs
//
// Prints every diagnostic the parser reports (schema errors, Spectral rules, payload
// examples checked against their schemas) and exits 1 when any has error severity,
// 2 when the document cannot be read. Exit 0 means the parser accepted the document.

import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];

async function readInput(path) {
  if (path && path !== "-") {
    return readFile(path, "utf8");
  }
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function describe(diagnostic) {
  const severity = SEVERITY[diagnostic.severity] ?? String(diagnostic.severity);
  const where = (diagnostic.path ?? []).join(".") || "(document)";
  return `${severity} ${diagnostic.code} at ${where}: ${diagnostic.message}`;
}

async function main(argv) {
  const path = argv[2];
  let text;
  try {
    text = await readInput(path);
  } catch (error) {
    console.error(`cannot read ${path ?? "stdin"}: ${error.message}`);
    return 2;
  }
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text, { source: path });
  for (const diagnostic of diagnostics) {
    console.log(describe(diagnostic));
  }
  const errors = diagnostics.filter((d) => d.severity === 0).length;
  if (errors > 0 || document === undefined) {
    console.log(`invalid: ${errors} error(s), ${diagnostics.length} diagnostic(s)`);
    return 1;
  }
  const version = document.version();
  console.log(
    `valid AsyncAPI ${version}: ${document.channels().length} channels, ` +
      `${document.operations().length} operations, ${document.messages().length} messages, ` +
      `${diagnostics.length} non-error diagnostic(s)`,
  );
  return 0;
}

process.exitCode = await main(process.argv);
