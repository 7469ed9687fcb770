// Where a client's credentials come from: a fixed string (an API key, a run token), or
// a function the client calls for one, and calls again when the server answers that the
// token it sent has expired (401, code "token_expired"). A run token lasts
// FLOWKIT_API_TOKEN_TTL (a day by default) while a run may wait for a person for weeks:
// a page whose app mints tokens (FlowKit.run_token) follows such a run without a reload.

/** The error code the API answers an expired run token with. */
export const TOKEN_EXPIRED = "token_expired";

export class TokenSource {
  /** @param {string | (() => string | Promise<string>) | undefined} given */
  constructor(given) {
    this.given = given;
    this.value = typeof given === "function" ? undefined : given;
    this.ready = typeof given !== "function";
    this.pending = null;
  }

  /** A function gives fresh tokens; a string is the only one there is. */
  get refreshable() {
    return typeof this.given === "function";
  }

  /** The token to send (one call of the function at a time, shared by every caller). */
  get() {
    if (this.ready) return Promise.resolve(this.value);
    if (!this.pending) {
      this.pending = Promise.resolve()
        .then(() => this.given())
        .then(
          (value) => {
            this.value = value || undefined;
            this.ready = true;
            this.pending = null;
            return this.value;
          },
          (error) => {
            this.pending = null;
            throw error;
          },
        );
    }
    return this.pending;
  }

  /** The server refused `used` as expired: the next `get()` asks the function again
   * (unless another caller already replaced that token). */
  expire(used) {
    if (this.refreshable && this.ready && this.value === used) {
      this.ready = false;
      this.value = undefined;
    }
  }
}
