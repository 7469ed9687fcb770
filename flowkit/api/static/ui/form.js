// A form generated from a waiting run's input schema (the JSON Schema the API publishes
// for a wait): one labelled control per property, typed by the property's type; the
// answer is the JSON object the wait expects. A wait without a schema takes any JSON: one
// field holds it. A wait opened again because the step refused its answer (`refused`)
// says why, next to the fields, with the refused answer filled in to correct.

import { h } from "./dom.js";

// An optional choice left alone sends nothing (its first option, or `false`, was sent)
const UNSET = "";

function control(id, name, prop, type, isRequired) {
  if (Array.isArray(prop.enum)) {
    const options = prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v)));
    return h("select", { id, name }, isRequired ? options : [h("option", { value: UNSET }, "—"), ...options]);
  }
  if (type === "boolean") {
    if (isRequired) return h("input", { id, name, type: "checkbox" });
    return h("select", { id, name }, h("option", { value: UNSET }, "—"),
      h("option", { value: "true" }, "yes"), h("option", { value: "false" }, "no"));
  }
  if (type === "integer" || type === "number") return h("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", required: isRequired });
  if (type === "object" || type === "array" || type === "any") return h("textarea", { id, name, rows: 3, placeholder: "JSON", required: isRequired });
  return h("input", { id, name, type: "text", required: isRequired });
}

function read(c) {
  // [present, value]: an empty optional field is left out of the answer
  if (c.input.type === "checkbox") return [true, c.input.checked];
  const raw = c.input.value;
  if (raw === UNSET) return [false, undefined];
  if (c.type === "any") {  // JSON; words that are not JSON are a string (hello, not "hello")
    try { return [true, JSON.parse(raw)]; } catch { return [true, raw]; }
  }
  if (c.enumerated || c.type === "boolean" || c.type === "object" || c.type === "array") return [true, JSON.parse(raw)];
  if (c.type === "integer" || c.type === "number") return [true, Number(raw)];
  return [true, raw];
}

function prefill(c, value) {
  if (value === undefined) return;
  if (c.input.type === "checkbox") c.input.checked = value === true;
  else if (c.enumerated || c.type === "boolean") c.input.value = JSON.stringify(value);
  else if (c.type === "object" || c.type === "array" || (c.type === "any" && typeof value !== "string")) c.input.value = JSON.stringify(value, null, 1);
  else c.input.value = value === null ? "" : String(value);
}

function said(messages) {
  // marshmallow's messages: a list, or a dict for a nested field
  if (Array.isArray(messages)) return messages.map(said).join(" ");
  if (messages && typeof messages === "object") return Object.entries(messages).map(([k, v]) => `${k}: ${said(v)}`).join(" ");
  return String(messages);
}

export function answerForm(waiting, onAnswer, prefix = "answer") {
  const free = !waiting.schema;  // any JSON: one field, whose value is the answer
  const schema = waiting.schema ?? {};
  const props = free ? { answer: { type: "any", title: "Answer (JSON)" } } : schema.properties ?? {};
  const required = new Set(free ? ["answer"] : schema.required ?? []);
  const controls = [];
  const fields = Object.entries(props).map(([name, prop]) => {
    const id = `${prefix}-${name}`;
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
    const input = control(id, name, prop, type, required.has(name));
    controls.push({ name, type, input, enumerated: Array.isArray(prop.enum) });
    return h("div", { class: "field" }, h("label", { for: id }, prop.title ?? name, required.has(name) ? " *" : ""), input,
      prop.description ? h("small", { class: "muted" }, prop.description) : null,
      h("small", { class: "error", id: `${id}-error`, role: "alert" }));
  });
  const status = h("p", { role: "status", class: "muted" });
  // off while the answer is out, and after it was taken: a double click sent it twice
  const send = h("button", { type: "submit" }, "Send answer");

  function showErrors(errors) {
    for (const [name, messages] of Object.entries(errors ?? {})) {
      const slot = form.querySelector(`#${CSS.escape(`${prefix}-${name}`)}-error`);
      if (slot) slot.textContent = said(messages);
      else status.textContent += ` ${name}: ${said(messages)}`;
    }
  }

  const form = h("form", { class: "answer", id: `${prefix}-form`, dataset: { wait: waiting.name }, onsubmit: async (e) => {
    e.preventDefault();
    let value = {};
    try {
      for (const c of controls) {
        const [present, v] = read(c);
        if (free) value = v;
        else if (present) value[c.name] = v;
      }
    } catch {
      status.textContent = "A JSON field does not parse.";
      return;
    }
    for (const slot of form.querySelectorAll("small.error")) slot.textContent = "";
    status.classList.remove("error");
    status.textContent = "Sending…";
    send.disabled = true;
    try {
      await onAnswer(value, form);
      status.textContent = "Answered.";
    } catch (error) {
      send.disabled = false;
      status.textContent = error.message;
      showErrors(free && error.fields ? { answer: error.fields } : error.fields);
    }
  } },
  h("h2", {}, `Answer “${waiting.name}”`),
  waiting.prompt ? h("p", {}, waiting.prompt) : null,
  fields, send, status);

  const refused = waiting.refused;
  if (refused && typeof refused === "object") {
    const answer = refused.answer;
    for (const c of controls) prefill(c, free ? answer : answer?.[c.name]);
    status.classList.add("error");
    status.textContent = refused.message ?? "Your last answer was refused: answer again.";
    showErrors(free && refused.errors ? { answer: refused.errors } : refused.errors);
  }
  return form;
}
