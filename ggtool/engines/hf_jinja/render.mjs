// ggtool's harness for @huggingface/jinja (the chat-template engine LM Studio bundles).
// stdin:  {"template": str, "cases": [{...globals...}]}
// stdout: [{"ok": true, "text": str} | {"ok": false, "error": str}]
import { Template } from "@huggingface/jinja";

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
let template = null;
let parseError = null;
try {
  template = new Template(job.template);
} catch (e) {
  parseError = `${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : e}`;
}
const results = job.cases.map((globals) => {
  if (parseError) return { ok: false, error: parseError };
  try {
    return { ok: true, text: template.render(globals) };
  } catch (e) {
    return { ok: false, error: `${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : e}` };
  }
});
process.stdout.write(JSON.stringify(results));
