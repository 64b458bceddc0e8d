// Validates model.yaml files with LM Studio's own virtual-model schema: the YAML is parsed by the `yaml`
// package and checked by `virtualModelDefinitionSchema` (zod) from @lmstudio/lms-shared-types, the package
// lmstudio-js publishes from packages/lms-shared-types/src/VirtualModelDefinition.ts.
//
// usage: node validate.mjs FILE...   stdout: one JSON line per file {"file", "ok", "issues"}; exit 1 if any fails
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { virtualModelDefinitionSchema } from "@lmstudio/lms-shared-types";

let failed = false;
for (const file of process.argv.slice(2)) {
  let result;
  try {
    const doc = parse(readFileSync(file, "utf8"));
    const parsed = virtualModelDefinitionSchema.safeParse(doc);
    result = parsed.success
      ? { file, ok: true, issues: [] }
      : { file, ok: false, issues: parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`) };
  } catch (e) {
    result = { file, ok: false, issues: [`not YAML: ${e.message}`] };
  }
  failed ||= !result.ok;
  console.log(JSON.stringify(result));
}
process.exit(failed ? 1 : 0);
