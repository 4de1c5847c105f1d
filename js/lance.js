// Frontend extension of the Lance nodes: keeps sizes and frame counts on the values Lance accepts,
// and shows the Lance Captioner's answer on the node.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const PACK_CATEGORY = "Lance";
const PIXELS_PER_LATENT = 16; // the VAE's 16x spatial compression
const FRAMES_PER_LATENT = 4; // its 4x temporal compression: valid lengths are 4k+1
const ANSWER_WIDGET = "answer";

// name -> [step, offset]: a value v is valid when (v - offset) is a multiple of step.
const LATTICES = {
  width: [PIXELS_PER_LATENT, 0],
  height: [PIXELS_PER_LATENT, 0],
  frames: [FRAMES_PER_LATENT, 1],
};

function snap(value, [step, offset], min, max) {
  const lowest = Math.ceil((min - offset) / step) * step + offset;
  const highest = Math.floor((max - offset) / step) * step + offset;
  const nearest = Math.round((Number(value) - offset) / step) * step + offset;
  return Math.min(highest, Math.max(lowest, nearest));
}

// ComfyUI's number widgets round typed values to min + k*step, which the nodes' min and step make the
// valid lattice. Snapping in the change callback as well keeps values that arrive unrounded valid
// (frontends that round from 0, other extensions setting values).
function snapOnChange(widget, lattice) {
  const onChange = widget.callback;
  widget.callback = function (value, ...rest) {
    const { min = -Infinity, max = Infinity } = widget.options ?? {};
    const snapped = snap(value, lattice, min, max);
    if (snapped !== widget.value) widget.value = snapped;
    return onChange?.call(this, widget.value, ...rest);
  };
}

// A read-only text box for the answer, left out of the saved workflow and of the prompt: the widget
// values of a workflow are positional, and a changing input would defeat the execution cache.
function answerWidget(node) {
  const { widget } = ComfyWidgets.STRING(node, ANSWER_WIDGET, ["STRING", { multiline: true }], app);
  widget.element.readOnly = true;
  widget.element.placeholder = "The answer appears here after a run.";
  widget.serialize = false;
  widget.options.serialize = false;
  return widget;
}

app.registerExtension({
  name: "lance.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const category = nodeData.category ?? "";
    if (category !== PACK_CATEGORY && !category.startsWith(`${PACK_CATEGORY}/`)) return;
    const isCaptioner = nodeData.name === "LanceCaptioner";

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const widget of this.widgets ?? []) {
        const lattice = widget.type === "number" && LATTICES[widget.name];
        if (lattice) snapOnChange(widget, lattice);
      }
      if (isCaptioner) answerWidget(this);
      return result;
    };

    if (!isCaptioner) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === ANSWER_WIDGET);
      if (widget) widget.value = message?.text?.join("\n") ?? "";
    };
  },
});
