// A form generated from a waiting run's input schema (the JSON Schema the API publishes
// for a wait): one labelled control per property, typed by the property's type; the
// answer is the JSON object the wait expects.

import { h } from "./dom.js";

export function answerForm(waiting, onAnswer, prefix = "answer") {
  const schema = waiting.schema ?? { type: "object", properties: {} };
  const props = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const controls = [];
  const fields = Object.entries(props).map(([name, prop]) => {
    const id = `${prefix}-${name}`;
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
    let input;
    if (type === "boolean") input = h("input", { id, name, type: "checkbox" });
    else if (Array.isArray(prop.enum)) input = h("select", { id, name }, prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
    else if (type === "integer" || type === "number") input = h("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", required: required.has(name) });
    else if (type === "object" || type === "array") input = h("textarea", { id, name, rows: 3, placeholder: "JSON", required: required.has(name) });
    else input = h("input", { id, name, type: "text", required: required.has(name) });
    controls.push({ name, type, input, enumerated: Array.isArray(prop.enum) });
    return h("div", { class: "field" }, h("label", { for: id }, prop.title ?? name, required.has(name) ? " *" : ""), input,
      prop.description ? h("small", { class: "muted" }, prop.description) : null,
      h("small", { class: "error", id: `${id}-error`, role: "alert" }));
  });
  const status = h("p", { role: "status", class: "muted" });
  // off while the answer is out, and after it was taken: a double click sent it twice
  const send = h("button", { type: "submit" }, "Send answer");
  const form = h("form", { class: "answer", id: `${prefix}-form`, dataset: { wait: waiting.name }, onsubmit: async (e) => {
    e.preventDefault();
    const value = {};
    try {
      for (const c of controls) {
        const raw = c.input.type === "checkbox" ? c.input.checked : c.input.value;
        if (c.enumerated) value[c.name] = JSON.parse(raw);
        else if (c.type === "boolean") value[c.name] = raw;
        else if (raw === "") continue;
        else if (c.type === "integer" || c.type === "number") value[c.name] = Number(raw);
        else if (c.type === "object" || c.type === "array") value[c.name] = JSON.parse(raw);
        else value[c.name] = raw;
      }
    } catch {
      status.textContent = "A JSON field does not parse.";
      return;
    }
    status.textContent = "Sending…";
    send.disabled = true;
    try {
      await onAnswer(value, form);
      status.textContent = "Answered.";
    } catch (error) {
      send.disabled = false;
      status.textContent = error.message;
      for (const [name, messages] of Object.entries(error.fields ?? {})) {
        const slot = form.querySelector(`#${CSS.escape(`${prefix}-${name}`)}-error`);
        if (slot) slot.textContent = [].concat(messages).join(" ");
      }
    }
  } },
  h("h2", {}, `Answer “${waiting.name}”`),
  waiting.prompt ? h("p", {}, waiting.prompt) : null,
  fields, send, status);
  return form;
}
