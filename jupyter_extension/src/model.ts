/**
 * The chat model behind the panel: @jupyter/chat's AbstractChatModel, its messages fed by
 * the qcoder socket through the pure reducer, its history kept per notebook by the server.
 */
import {
  AbstractChatContext,
  AbstractChatModel,
  IChatContext,
  IChatModel,
  IMessageContent,
  INewMessage,
  IUser
} from '@jupyter/chat';
import { UUID } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { ChatConnection, requestAPI } from './api';
import { QcoderCellManager } from './cells';
import { Action, IAnswer, ICellRef, IHistoryReply, ServerEvent } from './protocol';
import {
  IAnswerState,
  defaultRequest,
  disconnected,
  historyEntries,
  initialState,
  isActive,
  provenance,
  queueLine,
  reduce,
  renderAnswer,
  renderRequest
} from './reducer';

declare module '@jupyter/chat' {
  interface IMessageMetadata {
    /** On qcoder's answer messages: the request it answers and where it stands. */
    qcoder?: { requestId: string; status: IAnswerState['status']; answer: IAnswer | null };
  }
}

export const QCODER_USER: IUser = {
  username: 'qcoder',
  display_name: 'qcoder',
  initials: 'Q',
  color: 'var(--jp-brand-color1)',
  bot: true
};

const ME: IUser = { username: 'me', display_name: 'You', initials: 'Y' };

/** Where a request comes from: the notebook in front, its kernel. */
export interface INotebookContext {
  path: string | null;
  kernelId: string | null;
}

export class QcoderChatModel extends AbstractChatModel {
  constructor(
    options: IChatModel.IOptions & {
      connection: ChatConnection;
      cellManager: QcoderCellManager;
      context: () => INotebookContext;
    }
  ) {
    super({ ...options, config: { stackMessages: false, ...options.config } });
    this._connection = options.connection;
    this._cells = options.cellManager;
    this._context = options.context;
    this._connection.event.connect((_, event) => this._onEvent(event));
    this._connection.closed.connect((_, why) => this._onClosed(why));
    this.setReady();
  }

  get user(): IUser {
    return ME;
  }

  /** The model the next request asks for (the header's picker); null: the server's default. */
  model: string | null = null;

  /** Emits when a request starts, moves in the queue, or finishes (for the header). */
  get statusChanged(): ISignal<this, string> {
    return this._statusChanged;
  }

  /** What the header shows: "Queued: position 2", "Writing…", or "". */
  get status(): string {
    return queueLine([...this._states.values()]);
  }

  /** Whether any request of this panel is queued or running. */
  get busy(): boolean {
    return [...this._states.values()].some(isActive);
  }

  /** Emits a line when something fails outside a message (history, socket). */
  get problem(): ISignal<this, string> {
    return this._problem;
  }

  /** The notebook whose conversation the panel shows. */
  get path(): string | null {
    return this._path;
  }

  createChatContext(): IChatContext {
    return new QcoderChatContext({ model: this });
  }

  sendMessage(message: INewMessage): void {
    const text = message.body.trim();
    if (text) {
      void this.ask(text, 'ask', null, null);
    }
  }

  /** Send a request; its answer streams into a new message. Returns the request id. */
  async ask(
    request: string,
    action: Action,
    cell: ICellRef | null,
    selection: string | null
  ): Promise<string> {
    const ctx = this._context();
    if (ctx.path !== this._path) {
      await this.showNotebook(ctx.path);
    }
    const id = UUID.uuid4();
    const now = Date.now();
    this.messageAdded({
      type: 'msg',
      id: `${id}-request`,
      body: renderRequest(request, action, cell),
      sender: ME,
      time: now / 1000
    });
    const state = initialState(id, action);
    this._states.set(id, state);
    this._owner.set(id, ctx.path);
    this.messageAdded(this._answerMessage(state, now / 1000 + 0.001));
    this._changed();
    try {
      await this._connection.send({
        type: 'ask',
        id,
        request: request || defaultRequest(action),
        action,
        notebook_path: ctx.path,
        kernel_id: ctx.kernelId,
        cell,
        selection,
        model: this.model
      });
    } catch (error) {
      this._apply(id, disconnected(state, (error as Error).message));
    }
    return id;
  }

  /** Stop every queued or running request of this panel. */
  stop(): void {
    for (const state of this._states.values()) {
      if (isActive(state)) {
        void this._connection.send({ type: 'stop', id: state.id }).catch(() => {
          this._apply(state.id, disconnected(state, 'stopped (the connection was lost)'));
        });
      }
    }
  }

  /** Show the conversation of another notebook: its stored history from the server. */
  async showNotebook(path: string | null): Promise<void> {
    this._path = path;
    this.clearMessages();
    if (path === null) {
      return;
    }
    let messages: IMessageContent[] = [];
    try {
      const reply = await requestAPI<IHistoryReply>(`history?path=${encodeURIComponent(path)}`);
      const entries = historyEntries(Array.isArray(reply?.messages) ? reply.messages : []);
      const start = Date.now() / 1000 - entries.length;
      messages = entries.map((e, i) => {
        if (e.answer) {
          this._cells.remember(e.answer.cell, provenance(e.answer), e.answer.metadata_key);
        }
        return {
          type: 'msg',
          id: e.id,
          body: e.body,
          sender: e.role === 'user' ? ME : QCODER_USER,
          time: (e.time ?? (start + i) * 1000) / 1000,
          raw_time: e.time === null,
          metadata:
            e.role === 'assistant'
              ? { qcoder: { requestId: e.id, status: 'done', answer: e.answer } }
              : undefined
        };
      });
    } catch (error) {
      this._problem.emit(`could not load the history of ${path}: ${(error as Error).message}`);
    }
    if (this._path !== path) {
      return; // the user moved on while the history loaded
    }
    this.messagesInserted(0, messages);
    // requests of this notebook still streaming: show them after the stored history
    for (const [id, owner] of this._owner) {
      const state = this._states.get(id);
      if (owner === path && state && isActive(state)) {
        this.messageAdded(this._answerMessage(state, Date.now() / 1000));
      }
    }
  }

  /** Forget this notebook's conversation on the server and in the panel. */
  async clearHistory(): Promise<void> {
    if (this._path === null) {
      this.clearMessages();
      return;
    }
    await requestAPI(`history?path=${encodeURIComponent(this._path)}`, { method: 'DELETE' });
    this.clearMessages();
  }

  dispose(): void {
    this._connection.dispose();
    super.dispose();
  }

  private _onEvent(event: ServerEvent): void {
    const state = this._states.get(event.id);
    if (!state) {
      if (event.type === 'error' && !event.id) {
        this._problem.emit(event.message); // about no request (a message it could not read)
      }
      return; // another panel's (or a forgotten) request
    }
    this._apply(event.id, reduce(state, event));
  }

  private _onClosed(why: string): void {
    for (const [id, state] of this._states) {
      if (isActive(state)) {
        this._apply(id, disconnected(state, why));
      }
    }
  }

  private _apply(id: string, next: IAnswerState): void {
    const prev = this._states.get(id);
    if (!prev || prev === next) {
      return;
    }
    this._states.set(id, next);
    if (next.status === 'done' && next.answer) {
      this._cells.remember(next.answer.cell, provenance(next.answer), next.answer.metadata_key);
    }
    if (this._owner.get(id) === this._path) {
      const message = this.messages.find(m => m.id === `${id}-answer`);
      if (message) {
        message.update({
          body: renderAnswer(next),
          metadata: { qcoder: { requestId: id, status: next.status, answer: next.answer } }
        });
      }
    }
    if (prev.status !== next.status || prev.position !== next.position) {
      this._changed();
    }
    if (!isActive(next)) {
      this._states.delete(id);
      this._owner.delete(id);
      this._changed();
    }
  }

  private _answerMessage(state: IAnswerState, time: number): IMessageContent {
    return {
      type: 'msg',
      id: `${state.id}-answer`,
      body: renderAnswer(state),
      sender: QCODER_USER,
      time,
      metadata: { qcoder: { requestId: state.id, status: state.status, answer: state.answer } }
    };
  }

  private _changed(): void {
    const busy = this.busy;
    this.updateWriters(busy ? [{ user: QCODER_USER }] : []);
    this._statusChanged.emit(this.status);
  }

  private _connection: ChatConnection;
  private _cells: QcoderCellManager;
  private _context: () => INotebookContext;
  private _path: string | null = null;
  private _states = new Map<string, IAnswerState>();
  private _owner = new Map<string, string | null>();
  private _statusChanged = new Signal<this, string>(this);
  private _problem = new Signal<this, string>(this);
}

class QcoderChatContext extends AbstractChatContext {
  get users(): IUser[] {
    return [ME, QCODER_USER];
  }
}
