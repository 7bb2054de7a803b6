/**
 * The panel's state logic, pure: server events -> the state of one answer -> the markdown the
 * chat shows. No JupyterLab imports, so `jlpm test` runs it in plain Node.
 */
import { Action, IAnswer, ICellRef, ServerEvent } from './protocol';

/** Where one request stands. `sending`: written to the socket, no reply yet. */
export type Status = 'sending' | 'queued' | 'running' | 'done' | 'stopped' | 'error';

export interface IAnswerState {
  id: string;
  action: Action;
  status: Status;
  /** While `queued`: how many requests are ahead of it (0: next), else null. */
  position: number | null;
  /** The tokens streamed so far. */
  text: string;
  answer: IAnswer | null;
  error: string | null;
}

export function initialState(id: string, action: Action = 'ask'): IAnswerState {
  return { id, action, status: 'sending', position: null, text: '', answer: null, error: null };
}

/** Whether no further event can change the state. */
export function isFinished(state: IAnswerState): boolean {
  return state.status === 'done' || state.status === 'stopped' || state.status === 'error';
}

/** Whether the request still holds (or waits for) the model: what the stop button stops. */
export function isActive(state: IAnswerState): boolean {
  return !isFinished(state);
}

/**
 * Apply one server event. Events for another id, and events after the request finished (a
 * token that crossed a stop on the wire, a second done), leave the state as it is.
 */
export function reduce(state: IAnswerState, event: ServerEvent): IAnswerState {
  if (event.id !== state.id || isFinished(state)) {
    return state;
  }
  switch (event.type) {
    case 'queued':
      return { ...state, status: 'queued', position: event.position };
    case 'started':
      return { ...state, status: 'running', position: null };
    case 'token':
      return { ...state, status: 'running', position: null, text: state.text + event.text };
    case 'done':
      return { ...state, status: 'done', position: null, answer: event.answer };
    case 'stopped':
      return { ...state, status: 'stopped', position: null };
    case 'error':
      return { ...state, status: 'error', position: null, error: event.message };
    default:
      return state;
  }
}

/** The state when the connection to the server is lost before the request finished. */
export function disconnected(state: IAnswerState, why: string): IAnswerState {
  if (isFinished(state)) {
    return state;
  }
  return { ...state, status: 'error', position: null, error: why };
}

/** A fence that no backtick run inside `text` can close early. */
export function fence(text: string, lang = ''): string {
  const runs = text.match(/`{3,}/g) ?? [];
  const longest = runs.reduce((n, r) => Math.max(n, r.length), 2);
  const ticks = '`'.repeat(longest + 1);
  const body = text.endsWith('\n') ? text : text + '\n';
  return `${ticks}${lang}\n${body}${ticks}`;
}

const MARKS: { [verdict: string]: string } = {
  passed: '✓',
  failed: '✗',
  warning: '!',
  skipped: '-',
  'not possible': '-'
};

/** The checks as the magic prints them: `✓ runs  ✗ columns`. */
export function checksLine(checks: { [name: string]: string }): string {
  return Object.entries(checks)
    .map(([name, verdict]) => `${MARKS[verdict] ?? '?'} ${name}`)
    .join('  ');
}

/** The line above the code block: what was verified (the magic's cell header). */
export function summaryLine(answer: IAnswer): string {
  const verdict = answer.ok ? '' : ' · **NOT passing the checks**';
  const time = typeof answer.total_s === 'number' ? ` · ${answer.total_s.toFixed(1)} s` : '';
  const summary = answer.summary ? ` · ${answer.summary}` : '';
  return `**qcoder** · ${answer.task}${summary}${verdict}${time}`;
}

/** The markdown of an answer message in every state. */
export function renderAnswer(state: IAnswerState): string {
  const streamed = state.text ? '\n\n' + fence(state.text) : '';
  switch (state.status) {
    case 'sending':
      return '_Sending…_';
    case 'queued':
      return `_${queuedText(state.position)}_`;
    case 'running':
      return state.text ? `_Writing…_${streamed}` : '_Started; waiting for the first token…_';
    case 'stopped':
      return `_Stopped._${streamed}`;
    case 'error':
      return `**Error:** ${state.error ?? 'unknown error'}${streamed}`;
    case 'done':
      return state.answer ? renderDone(state.answer) : '_Done (no answer)._';
  }
}

function renderDone(answer: IAnswer): string {
  const parts = [summaryLine(answer)];
  const checks = checksLine(answer.checks ?? {});
  if (checks) {
    parts.push(`Checks: ${checks}`);
  }
  if (answer.cell && answer.cell.trim()) {
    parts.push(fence(answer.cell.trim(), 'python'));
  }
  if (answer.text && answer.text.trim() && (!answer.cell || answer.task === 'explain')) {
    parts.push(answer.text.trim());
  }
  for (const w of answer.warnings ?? []) {
    parts.push(`> warning: ${w}`);
  }
  return parts.join('\n\n');
}

/** The markdown of the user's message. */
export function renderRequest(request: string, action: Action, cell: ICellRef | null): string {
  const head =
    action === 'explain'
      ? `**Explain this cell** (cell ${cell ? cell.index + 1 : '?'})`
      : action === 'fix'
        ? `**Fix this error** (cell ${cell ? cell.index + 1 : '?'})`
        : '';
  const parts: string[] = [];
  if (head) {
    parts.push(head);
  }
  if (request.trim() && (action === 'ask' || request.trim() !== defaultRequest(action))) {
    parts.push(request.trim());
  }
  if (cell && cell.source.trim()) {
    parts.push(fence(cell.source.trim(), cell.cell_type === 'code' ? 'python' : ''));
  }
  if (cell && cell.error) {
    parts.push(fence(cell.error.trim()));
  }
  return parts.join('\n\n');
}

/** The request sent for explain / fix when the user typed none. */
export function defaultRequest(action: Action): string {
  return action === 'explain'
    ? 'Explain this cell.'
    : action === 'fix'
      ? 'Fix the error this cell raised.'
      : '';
}

/** The cell text under which a code block's provenance is filed (the chat copies `<pre>` text). */
export function codeKey(code: string): string {
  return code.replace(/\r\n/g, '\n').trim();
}

/**
 * The cell metadata to store under "qcoder". The contract sends the provenance itself; a
 * payload already wrapped as `{"qcoder": {...}}` (what the magic hands to set_next_input) is
 * unwrapped so the cell never gets `qcoder.qcoder`.
 */
export function provenance(answer: IAnswer): { [key: string]: unknown } | null {
  const meta = answer.metadata;
  if (!meta || typeof meta !== 'object') {
    return null;
  }
  const keys = Object.keys(meta);
  if (keys.length === 1 && keys[0] === 'qcoder' && meta.qcoder && typeof meta.qcoder === 'object') {
    return meta.qcoder as { [key: string]: unknown };
  }
  return meta;
}

/** One message of the stored history, as the panel shows it. */
export interface IHistoryEntry {
  id: string;
  role: 'user' | 'assistant';
  body: string;
  time: number | null;
  answer: IAnswer | null;
}

function asObject(x: unknown): { [key: string]: unknown } | null {
  return x !== null && typeof x === 'object' && !Array.isArray(x)
    ? (x as { [key: string]: unknown })
    : null;
}

function asString(x: unknown): string | null {
  return typeof x === 'string' ? x : null;
}

function asTime(x: unknown): number | null {
  if (typeof x === 'number' && isFinite(x)) {
    return x < 1e11 ? x * 1000 : x; // seconds (Python's time.time()) or milliseconds
  }
  if (typeof x === 'string') {
    const t = Date.parse(x);
    return isNaN(t) ? null : t;
  }
  return null;
}

function asAnswer(x: unknown): IAnswer | null {
  const o = asObject(x);
  if (!o) {
    return null;
  }
  return {
    cell: asString(o.cell) ?? '',
    text: asString(o.text) ?? '',
    task: asString(o.task) ?? '',
    ok: o.ok === true,
    summary: asString(o.summary) ?? '',
    checks: (asObject(o.checks) as { [name: string]: string }) ?? {},
    warnings: Array.isArray(o.warnings) ? o.warnings.filter(w => typeof w === 'string') : [],
    metadata: asObject(o.metadata) ?? {},
    metadata_key: asString(o.metadata_key) ?? undefined,
    first_token_s: typeof o.first_token_s === 'number' ? o.first_token_s : null,
    total_s: typeof o.total_s === 'number' ? o.total_s : null
  };
}

function asAction(x: unknown): Action {
  return x === 'explain' || x === 'fix' ? x : 'ask';
}

function asCell(x: unknown): ICellRef | null {
  const o = asObject(x);
  if (!o || typeof o.source !== 'string') {
    return null;
  }
  return {
    source: o.source,
    cell_type: asString(o.cell_type) ?? 'code',
    index: typeof o.index === 'number' ? o.index : -1,
    error: asString(o.error)
  };
}

/**
 * The server's stored history as chat messages. Each stored item is either one message
 * (`role` "user"/"assistant", or a `request` / an `answer`) or one exchange holding both a
 * `request` and its `answer` (or `error` / `stopped` status); anything else is skipped.
 */
export function historyEntries(messages: unknown[]): IHistoryEntry[] {
  const out: IHistoryEntry[] = [];
  messages.forEach((raw, i) => {
    const m = asObject(raw);
    if (!m) {
      return;
    }
    const id = asString(m.id) ?? `history-${i}`;
    const time = asTime(m.time ?? m.timestamp ?? m.created);
    const role = asString(m.role) ?? asString(m.sender);
    const request = asString(m.request);
    const answer = asAnswer(m.answer);
    const text = asString(m.text) ?? asString(m.body) ?? asString(m.content);
    if (request !== null) {
      out.push({
        id: `${id}-request`,
        role: 'user',
        body: renderRequest(request, asAction(m.action), asCell(m.cell)),
        time,
        answer: null
      });
    } else if (role === 'user' && text !== null) {
      const body = renderRequest(text, asAction(m.action), asCell(m.cell));
      out.push({ id: `${id}-request`, role: 'user', body, time, answer: null });
      return;
    }
    if (answer) {
      const state: IAnswerState = {
        ...initialState(id, asAction(m.action)),
        status: 'done',
        answer
      };
      out.push({ id: `${id}-answer`, role: 'assistant', body: renderAnswer(state), time, answer });
    } else if (asString(m.error) !== null || m.status === 'error') {
      const error = asString(m.error) ?? asString(m.message) ?? 'failed';
      out.push({ id: `${id}-answer`, role: 'assistant', body: `**Error:** ${error}`, time, answer: null });
    } else if (m.status === 'stopped' || m.stopped === true) {
      const body = '_Stopped._' + (text && text.trim() ? '\n\n' + fence(text) : '');
      out.push({ id: `${id}-answer`, role: 'assistant', body, time, answer: null });
    } else if (text !== null && (role === 'assistant' || role === 'qcoder')) {
      out.push({ id, role: 'assistant', body: text, time, answer: null });
    }
  });
  return out;
}

/** The socket URL: `{wsUrl}qcoder/chat`, with the token as Jupyter's own sockets pass it. */
export function chatSocketUrl(wsUrl: string, token: string): string {
  const base = wsUrl.endsWith('/') ? wsUrl : wsUrl + '/';
  const url = base + 'qcoder/chat';
  return token ? `${url}?token=${encodeURIComponent(token)}` : url;
}

/**
 * The queue position as words. The server counts the requests ahead of this one (the one
 * running included): 0 is next.
 */
export function queuedText(position: number | null): string {
  if (position === null) {
    return 'Queued';
  }
  if (position <= 0) {
    return 'Queued: next';
  }
  return `Queued: position ${position} (${position} ahead)`;
}

/** The queue line for the header: what is running or waiting, across this panel's requests. */
export function queueLine(states: IAnswerState[]): string {
  const active = states.filter(isActive);
  if (!active.length) {
    return '';
  }
  const running = active.find(s => s.status === 'running');
  if (running) {
    const waiting = active.length - 1;
    return waiting ? `Writing… (${waiting} more queued)` : 'Writing…';
  }
  const queued = active.filter(s => s.status === 'queued' && s.position !== null);
  if (queued.length) {
    return queuedText(Math.min(...queued.map(s => s.position as number)));
  }
  return 'Sending…';
}
