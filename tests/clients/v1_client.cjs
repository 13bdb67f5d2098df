// A Node client of modelrouter.v1 built from protos/ alone (@grpc/grpc-js and @grpc/proto-loader),
// with the shipped service config. It uses the v1 fields and prints what it got as one JSON object.
// Usage: node v1_client.cjs HOST:PORT PROTOS_DIR EMBED_MODEL RERANK_MODEL
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, protos, embedModel, rerankModel] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protos, "modelrouter/v1/model_router_service.proto"), {
  includeDirs: [protos],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).modelrouter.v1;
const serviceConfig = fs.readFileSync(path.join(protos, "modelrouter/v1/service_config.json"), "utf8");
const client = new v1.ModelRouterService(target, grpc.credentials.createInsecure(), {
  "grpc.service_config": serviceConfig,
});
const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 60000 }, (error, reply) => (error ? reject(error) : resolve(reply))),
  );

// EmbedStream: the first part sets the model, later ones only inputs; parts come back in order.
const stream = (model, parts) =>
  new Promise((resolve, reject) => {
    const call = client.EmbedStream({ deadline: Date.now() + 60000 });
    const replies = [];
    call.on("data", (reply) => replies.push({ offset: reply.offset, count: reply.response.embeddings.length }));
    call.on("error", reject);
    call.on("end", () => resolve(replies));
    parts.forEach((inputs, i) => call.write({ request: i === 0 ? { model, inputs } : { inputs } }));
    call.end();
  });

async function main() {
  const pages = [];
  let token = "";
  do {
    const page = await call("ListModels", { page_size: 1, page_token: token });
    pages.push(page.models.map((m) => m.name));
    token = page.next_page_token;
  } while (token);
  const model = (await call("GetModel", { name: rerankModel })).model;
  const texts = ["The quick brown fox jumps over the lazy dog.", "Hello"];
  const floats = await call("Embed", { model: embedModel, inputs: texts, model_version: "1" });
  const raw = await call("Embed", { model: embedModel, inputs: texts, encoding: "ENCODING_FLOAT32_BYTES" });
  const int8 = await call("Embed", { model: embedModel, inputs: texts, encoding: "ENCODING_INT8" });
  const document = "Ünïcödé wörds ".repeat(30) + "a quick brown fox";
  const ranked = await call("Rerank", { model: rerankModel, query: "fox", documents: [document] });
  const best = ranked.results[0];
  const bytes = Buffer.from(document, "utf8");
  const streamed = await stream(embedModel, [["one", "two", "three"], ["four"], ["five", "six"]]);
  let error = null;
  try {
    await call("GetModel", { name: "no-such-model" });
  } catch (e) {
    error = { code: e.code, details: e.details };
  }
  // A float32 embedding read from its bytes with no per-float parsing: one aligned copy of the slice
  // (protobufjs hands out bytes fields as views into the message, at any offset).
  const view = (data) => Array.from(new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length)));
  console.log(
    JSON.stringify({
      pages,
      score_type: model.score_type,
      versions: model.versions,
      floats: floats.embeddings.map((e) => e.values),
      float_version: floats.model_version,
      usage: floats.embeddings.map((e) => e.usage),
      raw: raw.embeddings.map((e) => view(e.data)),
      raw_encoding: raw.encoding,
      int8: int8.embeddings.map((e) => Array.from(new Int8Array(e.data.buffer, e.data.byteOffset, e.data.length))),
      window_text: bytes.subarray(best.best_window_start_utf8, best.best_window_end_utf8).toString("utf8"),
      window_code_points: Array.from(document).slice(best.best_window_start, best.best_window_end).join(""),
      streamed,
      error,
    }),
  );
}

main()
  .then(() => client.close())
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
