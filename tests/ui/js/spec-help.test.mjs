// spec-help.js: the spec editor's error list, JSON error positions and schema hints, against a
// schema shaped like pydantic's ($defs, $ref, anyOf for optional fields).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  describe as describeNode, fieldHint, fieldNode, jsonErrorMessage, resolve, schemaHints,
  validationErrors,
} from "../../../api/ui/static/spec-help.js";

const SCHEMA = {
  type: "object",
  properties: {
    model: { $ref: "#/$defs/Model" },
    search: { anyOf: [{ $ref: "#/$defs/Search" }, { type: "null" }], default: null },
    datasets: { type: "array", items: { $ref: "#/$defs/Dataset" } },
  },
  $defs: {
    Model: {
      description: "The network to search.",
      properties: {
        arch: { type: "string", enum: ["resnet18", "mlp"], description: "Architecture." },
        width: { type: "integer", minimum: 1, maximum: 4096, default: 64 },
      },
    },
    Search: {
      properties: {
        lr: { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.1 },
        schedule: { $ref: "#/$defs/Alias" },
      },
    },
    Alias: { $ref: "#/$defs/Schedule" },
    Schedule: { type: "string", default: { kind: "cosine" } },
    Dataset: { properties: { name: { type: "string", description: "<b>bold</b> name" } } },
  },
};

describe("validationErrors", () => {
  test("the errors list of a 422 body", () => {
    const errors = [{ field: "model.arch", message: "unknown" }];
    assert.equal(validationErrors({ errors, field: "x", message: "y" }), errors);
  });
  test("no list: the body's field and message, with fallbacks", () => {
    assert.deepEqual(validationErrors({ field: "model", message: "bad" }),
      [{ field: "model", message: "bad" }]);
    assert.deepEqual(validationErrors({ errors: [] }), [{ field: "(body)", message: "invalid" }]);
    assert.deepEqual(validationErrors(null), [{ field: "(body)", message: "invalid" }]);
  });
});

describe("jsonErrorMessage", () => {
  const errorOf = (text) => { try { JSON.parse(text); } catch (error) { return error; } };

  test("a position becomes a line and column", () => {
    const text = '{\n  "a": 1,\n  "b": ]\n}';
    const message = jsonErrorMessage(text, errorOf(text));
    const position = text.indexOf("]");
    if (/position \d+/.test(errorOf(text).message) && !/line \d+/.test(errorOf(text).message)) {
      assert.match(message, /\(line 3, column 8\)$/);
      assert.equal(text.split("\n")[2][7], "]", `position ${position}`);
    } else {
      assert.equal(message, errorOf(text).message);
    }
  });

  test("the same rule on fixed messages (engines word them differently)", () => {
    const text = "ab\ncd\nef";
    assert.equal(jsonErrorMessage(text, new Error("Unexpected token at position 4")),
      "Unexpected token at position 4 (line 2, column 2)");
    assert.equal(jsonErrorMessage(text, new Error("Bad at position 0")),
      "Bad at position 0 (line 1, column 1)");
    assert.equal(jsonErrorMessage(text, new Error("Bad at line 2 column 1 position 3")),
      "Bad at line 2 column 1 position 3", "already has a line");
    assert.equal(jsonErrorMessage(text, new Error("Unexpected end of JSON input")),
      "Unexpected end of JSON input");
  });
});

describe("schema lookups", () => {
  test("resolve follows $ref chains and narrows anyOf to the object or reference", () => {
    assert.equal(resolve(SCHEMA, SCHEMA.properties.model), SCHEMA.$defs.Model);
    assert.equal(resolve(SCHEMA, SCHEMA.properties.search), SCHEMA.$defs.Search);
    assert.equal(resolve(SCHEMA, { $ref: "#/$defs/Alias" }), SCHEMA.$defs.Schedule);
    assert.equal(resolve(SCHEMA, { $ref: "#/$defs/Missing" }), undefined);
    const plain = { type: "string" };
    assert.equal(resolve(SCHEMA, plain), plain);
  });

  test("fieldNode walks a dotted path through refs, optionals and list indexes", () => {
    assert.equal(fieldNode(SCHEMA, "model.arch"), SCHEMA.$defs.Model.properties.arch);
    assert.equal(fieldNode(SCHEMA, "search.lr"), SCHEMA.$defs.Search.properties.lr);
    assert.equal(fieldNode(SCHEMA, "search.schedule"), SCHEMA.$defs.Schedule);
    assert.equal(fieldNode(SCHEMA, "datasets.0.name"), SCHEMA.$defs.Dataset.properties.name);
    assert.equal(fieldNode(SCHEMA, "model"), SCHEMA.$defs.Model);
    assert.equal(fieldNode(SCHEMA, "model.nope"), undefined);
    assert.equal(fieldNode(SCHEMA, "model.nope.deeper"), null);
    assert.equal(fieldNode(null, "model"), null);
    assert.equal(fieldNode(SCHEMA, ""), null);
  });

  test("describe: description, type, enum, bounds, scalar default only", () => {
    assert.equal(describeNode(SCHEMA.$defs.Model.properties.arch),
      "Architecture. (string; one of resnet18, mlp)");
    assert.equal(describeNode(SCHEMA.$defs.Model.properties.width),
      "(integer; ≥ 1; ≤ 4096; default 64)");
    assert.equal(describeNode(SCHEMA.$defs.Search.properties.lr),
      "(number; > 0; < 1; default 0.1)");
    assert.equal(describeNode(SCHEMA.$defs.Schedule), "(string)", "an object default is left out");
    assert.equal(describeNode({}), "");
    assert.equal(describeNode(undefined), "");
  });

  test("fieldHint is escaped HTML, empty when the schema says nothing", () => {
    assert.equal(fieldHint(SCHEMA, "datasets.0.name"),
      '<div class="hint">&lt;b&gt;bold&lt;/b&gt; name (string)</div>');
    assert.equal(fieldHint(SCHEMA, "model.nope"), "");
    assert.equal(fieldHint(null, "model"), "");
  });

  test("schemaHints lists each section with its fields", () => {
    const html = schemaHints(SCHEMA);
    assert.ok(html.startsWith('<ul class="schema-list">'));
    assert.match(html, /<li><code>model<\/code> The network to search\.<ul>/);
    assert.match(html, /<li><code>model\.arch<\/code> Architecture\. \(string; one of resnet18, mlp\)<\/li>/);
    assert.match(html, /<li><code>search\.schedule<\/code> \(string\)<\/li>/);
    assert.match(html, /<li><code>datasets<\/code> \(array\)<\/li>/, "no fields: no sub-list");
    assert.doesNotMatch(html, /<b>/, "descriptions are escaped");
    assert.equal(schemaHints({}), '<ul class="schema-list"></ul>');
  });
});
