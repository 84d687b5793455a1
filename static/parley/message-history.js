/**
 * @file The conversation history, built from `speechText` data-channel frames exactly as the
 * Anam SDK's `MessageHistoryClient` builds it.
 *
 * - Every chunk becomes a `MESSAGE_STREAM_EVENT_RECEIVED` with id `role::message_id`.
 * - A user chunk is pushed as a new entry (the server sends user text once, final).
 * - Persona chunks with the same id are concatenated in arrival order (not by
 *   `content_index`), and `interrupted` is OR-ed.
 * - `MESSAGE_HISTORY_UPDATED` (the whole history) follows any chunk with `end_of_speech`.
 */

import { AnamEvent } from "./events.js";

/**
 * @typedef {object} Message
 * @property {string} id `role::message_id`
 * @property {"user"|"persona"} role
 * @property {string} content
 * @property {boolean} [interrupted] persona messages only
 * @property {{id: string, content: string}[]} [utterances]
 */

/**
 * @typedef {object} MessageStreamEvent
 * @property {string} id
 * @property {string} content
 * @property {string} role
 * @property {boolean} endOfSpeech
 * @property {boolean} interrupted
 * @property {number} contentIndex
 * @property {string} [utteranceId]
 * @property {string} [correlationId]
 * @property {string} [cueTag]
 */

export class MessageHistory {
  /** @param {import("./events.js").EventEmitter} emitter where the events go */
  constructor(emitter) {
    this.emitter = emitter;
    /** @type {Message[]} */
    this.messages = [];
  }

  /**
   * Turn one `speechText` frame's `data` into a stream event.
   * @param {object} data snake_case fields from the server
   * @returns {MessageStreamEvent}
   */
  static streamEvent(data) {
    const correlationId = data.user_action_correlation_id ?? data.correlationId;
    return {
      id: `${data.role}::${data.message_id}`,
      content: data.content,
      role: data.role,
      endOfSpeech: data.end_of_speech,
      interrupted: data.interrupted,
      contentIndex: data.content_index,
      ...(data.utterance_id ? { utteranceId: data.utterance_id } : {}),
      ...(correlationId ? { correlationId } : {}),
      ...(data.cue_tag ? { cueTag: data.cue_tag } : {}),
    };
  }

  /**
   * Handle one `speechText` frame.
   * @param {object} data
   */
  receive(data) {
    const event = MessageHistory.streamEvent(data);
    this.emitter.emit(AnamEvent.MESSAGE_STREAM_EVENT_RECEIVED, event);
    if (event.role === "user") {
      this.messages.push({ id: event.id, content: event.content, role: event.role });
    } else if (event.role === "persona") {
      this.addPersonaChunk(event);
    }
    if (event.endOfSpeech) {
      // A copy per update: listeners may keep it without seeing later changes.
      this.emitter.emit(
        AnamEvent.MESSAGE_HISTORY_UPDATED,
        this.messages.map((message) => ({ ...message })),
      );
    }
  }

  /** @param {MessageStreamEvent} event */
  addPersonaChunk(event) {
    const existing = this.messages.find((message) => message.id === event.id);
    if (!existing) {
      const message = { id: event.id, content: event.content, role: event.role, interrupted: event.interrupted };
      if (event.utteranceId) message.utterances = [{ id: event.utteranceId, content: event.content }];
      this.messages.push(message);
      return;
    }
    existing.content += event.content;
    existing.interrupted = Boolean(existing.interrupted || event.interrupted);
    if (event.utteranceId) {
      const utterances = existing.utterances ? [...existing.utterances] : [];
      const last = utterances[utterances.length - 1];
      if (last && last.id === event.utteranceId) {
        utterances[utterances.length - 1] = { ...last, content: last.content + event.content };
      } else {
        const content = utterances.length && event.content.startsWith(" ") ? event.content.slice(1) : event.content;
        utterances.push({ id: event.utteranceId, content });
      }
      existing.utterances = utterances;
    }
  }
}
