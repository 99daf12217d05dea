// The spec editor's pure helpers (page-new.js is the DOM side): the error list of a 422 body,
// JSON.parse errors with a line and column, and hints from the spec's JSON schema (GET
// /api/v1/spec/schema, pydantic's: $defs, $ref, anyOf for optional fields).

import { esc } from "./util.js";

/** The {field, message} list of a 422 body (``errors``, else its ``field``/``message``). */
export function validationErrors(body) {
  if (body?.errors?.length) return body.errors;
  return [{ field: body?.field || "(body)", message: body?.message || "invalid" }];
}

/** JSON.parse's message with the line and column where the engine reports a position. */
export function jsonErrorMessage(text, error) {
  const match = /position (\d+)/.exec(error.message);
  if (!match || /line \d+/.test(error.message)) return error.message;
  const position = Number(match[1]);
  const before = text.slice(0, position).split("\n");
  return `${error.message} (line ${before.length}, column ${before.at(-1).length + 1})`;
}

/** A schema node with its $ref chain followed (at most 10 deep) and an optional's anyOf
 * narrowed to the object or reference it allows (undefined when a $ref names nothing). */
export function resolve(schema, node) {
  let current = node;
  for (let i = 0; i < 10 && current && current.$ref; i += 1) {
    const name = current.$ref.split("/").pop();
    current = schema.$defs?.[name];
  }
  if (current?.anyOf) current = current.anyOf.find((x) => x.$ref || x.properties) || current;
  if (current?.$ref) return resolve(schema, current);
  return current;
}

/** The schema node of a dotted field path (list indexes skipped), or null. */
export function fieldNode(schema, field) {
  if (!schema || !field) return null;
  let node = schema;
  for (const part of field.split(".")) {
    node = resolve(schema, node);
    if (!node) return null;
    if (/^\d+$/.test(part) && node.items) { node = node.items; continue; }
    node = node.properties?.[part];
  }
  return resolve(schema, node) || node;
}

/** One line for a field: its description, then type, enum, bounds and scalar default. */
export function describe(node) {
  if (!node) return "";
  const bits = [];
  if (node.description) bits.push(node.description);
  const facts = [];
  if (node.type) facts.push(node.type);
  if (node.enum) facts.push(`one of ${node.enum.join(", ")}`);
  if (node.minimum !== undefined) facts.push(`≥ ${node.minimum}`);
  if (node.exclusiveMinimum !== undefined) facts.push(`> ${node.exclusiveMinimum}`);
  if (node.maximum !== undefined) facts.push(`≤ ${node.maximum}`);
  if (node.exclusiveMaximum !== undefined) facts.push(`< ${node.exclusiveMaximum}`);
  if (node.default !== undefined && typeof node.default !== "object") {
    facts.push(`default ${JSON.stringify(node.default)}`);
  }
  if (facts.length) bits.push(`(${facts.join("; ")})`);
  return bits.join(" ");
}

/** The hint under an error of ``field`` (HTML; empty when the schema says nothing). */
export function fieldHint(schema, field) {
  const text = describe(fieldNode(schema, field));
  return text ? `<div class="hint">${esc(text)}</div>` : "";
}

/** The "Spec fields" list: each top-level section and its fields (HTML). */
export function schemaHints(schema) {
  const sections = Object.entries(schema.properties || {}).map(([name, node]) => {
    const resolved = resolve(schema, node) || node;
    const props = resolved.properties ? Object.entries(resolved.properties) : [];
    const rows = props.map(([key, child]) =>
      `<li><code>${esc(name)}.${esc(key)}</code> ${esc(describe(resolve(schema, child) || child))}</li>`);
    return `<li><code>${esc(name)}</code> ${esc(resolved.description || describe(resolved))}` +
      (rows.length ? `<ul>${rows.join("")}</ul>` : "") + "</li>";
  });
  return `<ul class="schema-list">${sections.join("")}</ul>`;
}
