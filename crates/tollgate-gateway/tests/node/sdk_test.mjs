// The official OpenAI SDK for Node against the demo (`tollgate serve
// --demo`'s configuration and simulated upstream), on its usual paths.
// Run by tests/e2e_sdk.rs, which installs the `openai` npm package under
// target/ and passes the demo gateway's URL in TOLLGATE_BASE_URL.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.TOLLGATE_BASE_URL + "/v1",
  apiKey: "tg-demo-pro",
  maxRetries: 0,
});
const messages = [{ role: "user", content: "Hello!" }];

const r = await client.chat.completions.create({ model: "gpt-4o-mini", messages, max_tokens: 50 });
assert.ok(r.choices[0].message.content);
assert.equal(r.choices[0].finish_reason, "stop");

const cut = await client.chat.completions.create({ model: "gpt-4o-mini", messages, max_tokens: 3, n: 2 });
assert.deepEqual(cut.choices.map((c) => c.finish_reason), ["length", "length"]);

// The usual streaming loop: choices[0] on every chunk.
let text = "";
const stream = await client.chat.completions.create({ model: "gpt-4o-mini", messages, max_tokens: 50, stream: true });
for await (const chunk of stream) {
  text += chunk.choices[0].delta.content ?? "";
}
assert.ok(text.length > 10, text);

// Embeddings in the SDK's default encoding (base64, decoded by the SDK).
const e = await client.embeddings.create({ model: "text-embedding-3-small", input: "hello" });
const vec = e.data[0].embedding;
assert.equal(vec.length, 8, JSON.stringify(vec));
assert.ok(Math.abs(vec[0] - 0.1) < 1e-6 && Math.abs(vec[1] + 0.2) < 1e-6, JSON.stringify(vec));

assert.equal((await client.models.retrieve("gpt-4o-mini")).id, "gpt-4o-mini");

const resp = await client.responses.create({ model: "gpt-4o-mini", input: "Say hello", max_output_tokens: 50 });
assert.ok(resp.output_text);
const events = [];
for await (const ev of await client.responses.create({ model: "gpt-4o-mini", input: "Say hello", stream: true })) {
  events.push(ev);
}
const last = events[events.length - 1];
assert.equal(last.type, "response.completed");
const deltas = events.filter((ev) => ev.type === "response.output_text.delta").map((ev) => ev.delta).join("");
assert.equal(deltas, last.response.output[0].content[0].text);

console.log("node demo ok", OpenAI.VERSION ?? "");
