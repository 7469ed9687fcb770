// @flowkit/client: follow flowkit runs from a browser (or Node) with no runtime
// dependencies. The modules are small on purpose; scripts/build-js-client joins
// them into flowkit/api/static/client/flowkit-client.js for pages without a build.
export { FlowkitClient, FlowkitError, RunWatch, storageKey } from "./client.js";
export { foldEvent, foldEvents, initialRunState, compareEventIds, isTerminal, TERMINAL_STATES, packState, unpackState } from "./fold.js";
export { openWebSocket, openEventStream, parseSseBlock, absoluteUrl } from "./transport.js";
