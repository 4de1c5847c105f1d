// ComfyUI's real frontend in the system's chromium, driven through playwright-core.
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const BROWSER_NAMES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
const APP_READY_TIMEOUT_MS = 90_000;

export function chromiumPath() {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  for (const name of BROWSER_NAMES) {
    try {
      return execFileSync("which", [name], { encoding: "utf8" }).trim();
    } catch {
      // not on PATH; try the next name
    }
  }
  throw new Error(`no chromium found (tried ${BROWSER_NAMES.join(", ")}); run: bash tests/browser/setup.sh, ` +
    "or set CHROMIUM_PATH");
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumPath(),
    // --no-sandbox: test machines often run as root, where chromium's sandbox refuses to start.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
      "--disable-component-update"],
  });
}

// One tab with the frontend loaded, recording the console errors and uncaught exceptions it raises.
export class ComfyPage {
  constructor(page, url) {
    this.page = page;
    this.url = url;
    this.errors = [];
    page.on("console", (message) => {
      if (message.type() === "error") {
        this.errors.push({ text: message.text(), url: message.location()?.url ?? "" });
      }
    });
    page.on("pageerror", (error) => this.errors.push({ text: `${error.message}\n${error.stack}`, url: "" }));
  }

  static async open(browser, url) {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const comfy = new ComfyPage(page, url);
    await page.goto(url);
    await page.waitForFunction(
      () => window.app?.graph && window.app.extensionManager && Object.keys(window.LiteGraph?.registered_node_types ?? {}).length > 0,
      null, { timeout: APP_READY_TIMEOUT_MS });
    // A first visit opens the template browser over the canvas, a moment after the app is ready.
    await page.locator(".p-dialog-mask").first().waitFor({ state: "visible", timeout: 5000 }).catch(() => {});
    await comfy.closeDialogs();
    return comfy;
  }

  async closeDialogs() {
    const masks = this.page.locator(".p-dialog-mask");
    for (let tries = 0; tries < 5 && (await masks.count()) > 0; tries += 1) {
      await this.page.keyboard.press("Escape");
      await masks.first().waitFor({ state: "detached", timeout: 2000 }).catch(() => {});
    }
  }

  async openTemplateBrowser(packName) {
    await this.page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    await this.page.getByText(packName, { exact: true }).click();
    await this.page.getByTestId("template-workflows-content").waitFor({ state: "visible" });
  }

  // Names of the template cards the browser shows.
  async templateCards() {
    const prefix = "template-workflow-";
    const ids = await this.page.locator(`[data-testid^="${prefix}"]`).evaluateAll(
      (cards) => cards.map((card) => card.getAttribute("data-testid")));
    return ids.map((id) => id.slice(prefix.length));
  }

  // Errors whose text or source mentions `marker` (e.g. the pack's extension path).
  errorsMentioning(...markers) {
    return this.errors.filter((e) => markers.some((m) => `${e.text} ${e.url}`.toLowerCase().includes(m.toLowerCase())));
  }

  async loadWorkflow(workflow, name) {
    await this.page.evaluate(async ([data, fileName]) => {
      await window.app.loadGraphData(data, true, true, fileName);
    }, [workflow, name]);
    await this.page.waitForTimeout(300);
  }

  // The dialogs the frontend opens when a workflow names node types or model files it cannot find.
  async visibleDialogTitles() {
    return this.page.evaluate(() => [...document.querySelectorAll(".p-dialog")]
      .filter((d) => d.offsetParent !== null)
      .map((d) => d.querySelector(".p-dialog-title, .p-dialog-header")?.textContent?.trim() ?? d.textContent.slice(0, 80)));
  }

  async promptOutput() {
    return this.page.evaluate(async () => (await window.app.graphToPrompt()).output);
  }

  async serializedGraph() {
    return this.page.evaluate(() => window.app.graph.serialize());
  }

  // Shows the node at full size with its top left corner at `where` on the canvas.
  async showNode(nodeId, where = [300, 250]) {
    await this.page.evaluate(([id, [x, y]]) => {
      const { app } = window;
      const node = app.graph.getNodeById(id);
      app.canvas.ds.scale = 1;
      app.canvas.ds.offset = [x - node.pos[0], y - node.pos[1]];
      app.canvas.setDirty(true, true);
    }, [nodeId, where]);
  }

  // The title of the help page the frontend shows for a node (select it, press the toolbox's info
  // button), once it reads `expected` or after a few seconds.
  async helpPageTitle(nodeId, expected) {
    // Right of the help panel, which opens on the left.
    await this.showNode(nodeId, [800, 300]);
    await this.page.evaluate((id) => window.app.canvas.selectNode(window.app.graph.getNodeById(id)), nodeId);
    await this.page.getByTestId("info-button").click();
    const title = this.page.locator(".markdown-content h1").first();
    await this.page.waitForFunction((text) => document.querySelector(".markdown-content h1")?.innerText === text,
      expected, { timeout: 5000 }).catch(() => {});
    return title.innerText();
  }

  // Screen position of a widget's value box on the canvas.
  async widgetPoint(nodeId, widgetName) {
    return this.page.evaluate(([id, name]) => {
      const { app } = window;
      const node = app.graph.getNodeById(id);
      const widget = node.widgets.find((w) => w.name === name);
      const box = app.canvas.canvas.getBoundingClientRect();
      const { offset, scale } = app.canvas.ds;
      const toScreen = (value, axis) => (value + offset[axis]) * scale;
      return {
        x: box.left + toScreen(node.pos[0] + node.size[0] / 2, 0),
        y: box.top + toScreen(node.pos[1] + widget.y + 10, 1),
      };
    }, [nodeId, widgetName]);
  }

  // The two node renderers: the canvas (LiteGraph) and "Nodes 2.0" (Vue components in the DOM).
  async useVueNodes(enabled) {
    await this.page.evaluate((on) => window.app.extensionManager.setting.set("Comfy.VueNodes.Enabled", on), enabled);
    await this.page.waitForTimeout(500);
  }

  async vueNodesEnabled() {
    return this.page.evaluate(() => window.app.extensionManager.setting.get("Comfy.VueNodes.Enabled"));
  }

  // Types `text` into a number widget the way a user does, in whichever renderer is active.
  async typeIntoWidget(nodeId, widgetName, text) {
    await this.showNode(nodeId);
    // Widget positions are known once the canvas has drawn the node.
    await this.page.waitForTimeout(300);
    if (await this.vueNodesEnabled()) {
      const input = this.page.locator(`[data-node-id="${nodeId}"] input[aria-label="${widgetName}"]`);
      // PrimeVue's number input reads keystrokes, so type instead of filling the field.
      await input.click();
      await input.press("Control+A");
      await input.pressSequentially(text);
      await input.press("Tab");
    } else {
      const point = await this.widgetPoint(nodeId, widgetName);
      await this.page.mouse.dblclick(point.x, point.y);
      const input = this.page.locator(".graphdialog input");
      await input.waitFor({ state: "visible", timeout: 5000 });
      await input.fill(text);
      await input.press("Enter");
      await input.waitFor({ state: "hidden", timeout: 5000 });
    }
    return this.widgetValue(nodeId, widgetName);
  }

  async widgetValue(nodeId, widgetName) {
    return this.page.evaluate(([id, name]) =>
      window.app.graph.getNodeById(id).widgets.find((w) => w.name === name).value, [nodeId, widgetName]);
  }

  async setWidgets(nodeId, values) {
    await this.page.evaluate(([id, entries]) => {
      const node = window.app.graph.getNodeById(id);
      for (const [name, value] of Object.entries(entries)) node.widgets.find((w) => w.name === name).value = value;
    }, [nodeId, values]);
  }
}
