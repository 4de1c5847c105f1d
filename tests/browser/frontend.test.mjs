// The shipped workflows and the pack's web extension in ComfyUI's real frontend.
//
// Needs a running server with this pack (COMFY_URL, COMFY_PACK_NAME), the tiny checkpoint in its model
// folders and example.png in its input folder; tests/server/test_browser.py provides all of that.
// LANCE_BROWSER_ARTIFACTS names the folder for the screenshot (default: tests/browser/artifacts).
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { ComfyPage, launchBrowser } from "./comfy_page.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WORKFLOWS_DIR = path.resolve(HERE, "../../workflows");
const ARTIFACTS_DIR = process.env.LANCE_BROWSER_ARTIFACTS ?? path.join(HERE, "artifacts");
const URL = required("COMFY_URL");
const PACK = required("COMFY_PACK_NAME");
const EXTENSION_PATH = `/extensions/${PACK}/`;
const RUN_TIMEOUT_MS = 240_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set; run these tests through tests/server/test_browser.py`);
  return value;
}

function readJson(file) {
  return JSON.parse(readFileSync(file, "utf8"));
}

const WORKFLOW_NAMES = readdirSync(WORKFLOWS_DIR).filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5)).sort();
const workflow = (name) => readJson(path.join(WORKFLOWS_DIR, `${name}.json`));
const apiTwin = (name) => readJson(path.join(WORKFLOWS_DIR, "api", `${name}.json`));
const nodeOfType = (data, type) => data.nodes.find((n) => n.type === type);
// What a console error from the pack mentions: its web folder, or one of its node types.
const packMarkers = (data) => [EXTENSION_PATH, ...new Set(data.nodes.map((n) => n.type).filter((t) => t.startsWith("Lance")))];

// Core display widgets (PreviewAny's "preview") land in the frontend's prompt as inputs their node does
// not declare; the server ignores them. The pack's nodes must add none.
function withoutCoreDisplayWidgets(prompt) {
  for (const node of Object.values(prompt)) {
    if (node.class_type.startsWith("Lance")) continue;
    const declared = OBJECT_INFO[node.class_type].input_order;
    const known = new Set([...(declared.required ?? []), ...(declared.optional ?? [])]);
    for (const name of Object.keys(node.inputs)) if (!known.has(name)) delete node.inputs[name];
  }
  return prompt;
}

async function getJson(route) {
  const response = await fetch(URL + route);
  assert.equal(response.status, 200, `GET ${route} answered ${response.status}`);
  return response.json();
}

let browser;
let comfy;
let OBJECT_INFO;

before(async () => {
  OBJECT_INFO = await getJson("/object_info");
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  browser = await launchBrowser();
  comfy = await ComfyPage.open(browser, URL);
});

after(async () => {
  await browser?.close();
});

test("the pack's extension is loaded by the frontend", async () => {
  const names = await comfy.page.evaluate(() => window.app.extensions.map((e) => e.name));
  assert.ok(names.includes("lance.nodes"), `lance.nodes missing from ${names.join(", ")}`);
});

test("the template browser lists exactly the shipped workflows, served unchanged", async () => {
  assert.ok(WORKFLOW_NAMES.length > 0, `no workflows in ${WORKFLOWS_DIR}`);
  const templates = await getJson("/api/workflow_templates");
  assert.deepEqual([...(templates[PACK] ?? [])].sort(), WORKFLOW_NAMES);
  for (const name of WORKFLOW_NAMES) {
    assert.deepEqual(await getJson(`/api/workflow_templates/${PACK}/${name}.json`), workflow(name), name);
  }

  await comfy.openTemplateBrowser(PACK);
  assert.deepEqual((await comfy.templateCards()).sort(), WORKFLOW_NAMES);
  // A click on a card opens that workflow.
  await comfy.page.evaluate(() => window.app.graph.clear());
  await comfy.page.getByTestId("template-workflow-text_to_video").click();
  await comfy.page.waitForFunction(() => window.app.graph.nodes.length > 0);
  await comfy.closeDialogs();
  const loaded = await comfy.serializedGraph();
  assert.deepEqual(loaded.nodes.map((n) => n.type).sort(), workflow("text_to_video").nodes.map((n) => n.type).sort());
});

describe("every shipped workflow loads cleanly", () => {
  for (const name of WORKFLOW_NAMES) {
    test(name, async () => {
      const data = workflow(name);
      comfy.errors.length = 0;
      const unknown = await comfy.page.evaluate((types) => types.filter((t) => !(t in window.LiteGraph.registered_node_types)),
        data.nodes.map((n) => n.type));
      assert.deepEqual(unknown, [], `node types the frontend does not know: ${unknown}`);

      await comfy.loadWorkflow(data, `${name}.json`);
      // The missing-nodes and missing-models dialogs would open here.
      assert.deepEqual(await comfy.visibleDialogTitles(), []);
      assert.deepEqual(comfy.errorsMentioning(...packMarkers(data)), []);

      // The frontend reads the positional widget values as written and turns the graph into the API twin.
      const saved = await comfy.serializedGraph();
      for (const node of data.nodes) {
        const again = saved.nodes.find((n) => n.id === node.id);
        assert.deepEqual(again.widgets_values ?? [], node.widgets_values ?? [], `widgets of node ${node.id} (${node.type})`);
      }
      assert.deepEqual(withoutCoreDisplayWidgets(await comfy.promptOutput()), apiTwin(name));
    });
  }
});

test("screenshot of the loaded text-to-video workflow", async () => {
  await comfy.loadWorkflow(workflow("text_to_video"), "text_to_video.json");
  await comfy.page.evaluate(() => window.app.canvas.setDirty(true, true));
  const file = path.join(ARTIFACTS_DIR, "text_to_video.png");
  const png = await comfy.page.screenshot({ path: file });
  assert.ok(png.length > 10_000, `screenshot of ${png.length} bytes`);
  console.log(`screenshot: ${file}`);
});

for (const renderer of ["canvas", "Nodes 2.0"]) {
  describe(`typed sizes and frame counts snap to the values Lance accepts (${renderer})`, () => {
    let latentId;
    before(async () => {
      await comfy.useVueNodes(renderer === "Nodes 2.0");
      const data = workflow("text_to_video");
      await comfy.loadWorkflow(data, "text_to_video.json");
      latentId = nodeOfType(data, "LanceEmptyLatent").id;
    });
    after(async () => {
      await comfy.useVueNodes(false);
    });

    for (const [name, typed, expected] of [["width", "770", 768], ["height", "500", 496], ["frames", "50", 49]]) {
      test(`${name} ${typed} becomes ${expected}`, async () => {
        assert.equal(await comfy.typeIntoWidget(latentId, name, typed), expected);
      });
    }
  });
}

test("the extension snaps values that reach a widget's change callback unrounded", async () => {
  const data = workflow("image_to_video");
  await comfy.loadWorkflow(data, "image_to_video.json");
  const values = await comfy.page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    return [["frames", 50], ["frames", 200], ["frames", 2]].map(([name, value]) => {
      const widget = node.widgets.find((w) => w.name === name);
      widget.value = value;
      widget.callback(value);
      return widget.value;
    });
  }, nodeOfType(data, "LanceImageToVideoLatent").id);
  // Image-to-video needs at least 5 frames.
  assert.deepEqual(values, [49, 121, 5]);
});

test("every node of the pack opens its help page from the node's info button", async () => {
  const packNodes = Object.values(OBJECT_INFO).filter((info) => info.python_module === `custom_nodes.${PACK}`);
  assert.ok(packNodes.length > 0, "the server lists no node of the pack");
  for (const info of packNodes) {
    const nodeId = await comfy.page.evaluate((type) => {
      const { app, LiteGraph } = window;
      app.graph.clear();
      const node = LiteGraph.createNode(type);
      app.graph.add(node);
      return node.id;
    }, info.name);
    assert.equal(await comfy.helpPageTitle(nodeId, info.display_name), info.display_name, `help page of ${info.name}`);
  }
});

test("image_to_text queued with the Run button completes and the captioner shows its answer", async () => {
  const data = workflow("image_to_text");
  await comfy.loadWorkflow(data, "image_to_text.json");
  const captioner = nodeOfType(data, "LanceCaptioner").id;
  const preview = nodeOfType(data, "PreviewAny").id;
  // Small enough for the tiny checkpoint on a CPU.
  // A marker in the answer box, so that even an empty answer must replace it.
  await comfy.setWidgets(captioner, { resolution: "image_256res", max_new_tokens: 8, answer: "(not run yet)" });
  comfy.errors.length = 0;

  const queued = comfy.page.waitForResponse((r) => r.url().endsWith("/prompt") && r.request().method() === "POST");
  await comfy.page.getByTestId("queue-button").getByRole("button", { name: "Run" }).click();
  const response = await queued;
  assert.equal(response.status(), 200, `the server refused the prompt: ${await response.text()}`);
  const { prompt_id: promptId } = await response.json();
  const deadline = Date.now() + RUN_TIMEOUT_MS;
  let entry;
  while (!entry) {
    assert.ok(Date.now() < deadline, `prompt ${promptId} unfinished after ${RUN_TIMEOUT_MS / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 500));
    entry = (await getJson(`/history/${promptId}`))[promptId];
  }
  assert.equal(entry.status.status_str, "success", JSON.stringify(entry.status.messages));
  const answer = entry.outputs[String(captioner)].text.join("\n");
  assert.deepEqual(entry.outputs[String(preview)].text, [answer]);
  await comfy.page.waitForFunction(([id, text]) =>
    window.app.graph.getNodeById(id).widgets.find((w) => w.name === "answer").value === text, [captioner, answer],
  { timeout: 10_000 });
  assert.deepEqual(comfy.errorsMentioning(...packMarkers(data)), []);
  await comfy.showNode(captioner, [800, 300]);
  await comfy.page.screenshot({ path: path.join(ARTIFACTS_DIR, "image_to_text_answer.png") });
});
