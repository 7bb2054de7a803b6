/**
 * The wire format between the panel and the qcoder server extension
 * (`{base_url}qcoder/...`, WebSocket `qcoder/chat`). Kept free of JupyterLab imports so the
 * reducer that consumes it can be unit-tested in plain Node.
 */

/** What the request asks the copilot to do. */
export type Action = 'ask' | 'explain' | 'fix';

/** The notebook cell a request is about (explain / fix). */
export interface ICellRef {
  source: string;
  cell_type: string;
  index: number;
  /** The cell's error output as text, for "fix". */
  error: string | null;
}

/** Client -> server: a request. */
export interface IAskMessage {
  type: 'ask';
  id: string;
  request: string;
  action: Action;
  notebook_path: string | null;
  kernel_id: string | null;
  cell: ICellRef | null;
  selection: string | null;
  model: string | null;
}

/** Client -> server: stop a queued or running request. */
export interface IStopMessage {
  type: 'stop';
  id: string;
}

export type ClientMessage = IAskMessage | IStopMessage;

/** The checked answer, as the copilot returns it. */
export interface IAnswer {
  cell: string;
  text: string;
  task: string;
  ok: boolean;
  summary: string;
  checks: { [name: string]: string };
  warnings: string[];
  /** Provenance, stored on an inserted cell under the key the magic uses ("qcoder"). */
  metadata: { [key: string]: unknown };
  /** The cell metadata key for `metadata` (the server sends "qcoder", as the magic uses). */
  metadata_key?: string;
  first_token_s: number | null;
  total_s: number | null;
}

/** Server -> client events; every one carries the request id. */
export type ServerEvent =
  | { type: 'queued'; id: string; position: number }
  | { type: 'started'; id: string }
  | { type: 'token'; id: string; text: string }
  | { type: 'done'; id: string; answer: IAnswer }
  | { type: 'stopped'; id: string }
  | { type: 'error'; id: string; message: string };

/** GET qcoder/models */
export interface IModelInfo {
  name: string;
  installed: boolean;
  default: boolean;
  why: string;
}

export interface IModelsReply {
  models: IModelInfo[];
  current: string;
}

/** GET / PUT qcoder/settings */
export interface ISettingsReply {
  model: string;
  repairs: number;
  check: boolean;
}

/** GET qcoder/history?path=... ; the entries' shape is the server's (see reducer.historyEntries). */
export interface IHistoryReply {
  messages: unknown[];
}
