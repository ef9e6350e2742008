'use strict';

/** An answer from Corral that is not a success: `status` is the HTTP status, when there was one. */
class CorralError extends Error {
  constructor(message, { status, body } = {}) {
    super(message);
    this.name = 'CorralError';
    this.status = status;
    this.body = body;
  }
}

/** Corral refused the credentials (401/403): retrying with the same token cannot help. */
class CorralAuthError extends CorralError {
  constructor(message, opts) {
    super(message, opts);
    this.name = 'CorralAuthError';
  }
}

module.exports = { CorralError, CorralAuthError };
