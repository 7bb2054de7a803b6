/**
 * REST calls and the chat socket, through @jupyterlab/services' ServerConnection so the
 * server's auth (token, XSRF cookie) is handled as for Jupyter's own requests.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { ClientMessage, ServerEvent } from './protocol';
import { chatSocketUrl } from './reducer';

/** An HTTP error from the qcoder server, with the message its JSON body gave. */
export class QcoderApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** `fetch {base_url}qcoder/<endpoint>` and parse the JSON reply; a non-2xx reply throws. */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'qcoder', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new QcoderApiError(`the Jupyter server did not answer: ${String(error)}`, 0);
  }
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const o = data as { message?: unknown; reason?: unknown } | null;
    const message =
      o && typeof o === 'object' && typeof o.message === 'string'
        ? o.message
        : response.status === 404
          ? 'the qcoder server extension is not enabled (404 on ' +
            url +
            '); run `jupyter server extension enable qcoder_ds.server` and restart'
          : `${response.status} ${response.statusText}`;
    throw new QcoderApiError(message, response.status);
  }
  return data as T;
}

/**
 * The chat socket: opened on first use, re-opened on the next send after it closed. Events
 * arrive on `event`; a close while requests were pending is reported on `closed`.
 */
export class ChatConnection {
  constructor(settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    this._settings = settings;
  }

  get event(): ISignal<this, ServerEvent> {
    return this._event;
  }

  /** Emits the reason when the socket closes or fails to open. */
  get closed(): ISignal<this, string> {
    return this._closed;
  }

  async send(message: ClientMessage): Promise<void> {
    const socket = await this._open();
    socket.send(JSON.stringify(message));
  }

  dispose(): void {
    this._socket?.close();
    this._socket = null;
    this._opening = null;
  }

  private _open(): Promise<WebSocket> {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) {
      return Promise.resolve(this._socket);
    }
    if (this._opening) {
      return this._opening;
    }
    const url = chatSocketUrl(this._settings.wsUrl, this._settings.token);
    this._opening = new Promise<WebSocket>((resolve, reject) => {
      const WS = this._settings.WebSocket;
      const socket = new WS(url);
      let opened = false;
      socket.onopen = () => {
        opened = true;
        this._socket = socket;
        this._opening = null;
        resolve(socket);
      };
      socket.onmessage = (msg: MessageEvent) => {
        let event: ServerEvent;
        try {
          event = JSON.parse(String(msg.data)) as ServerEvent;
        } catch {
          console.error('qcoder: a message from the server is not JSON', msg.data);
          return;
        }
        this._event.emit(event);
      };
      socket.onclose = (ev: CloseEvent) => {
        this._socket = null;
        this._opening = null;
        const why = opened
          ? `the connection to the qcoder server closed (code ${ev.code}${ev.reason ? ': ' + ev.reason : ''})`
          : `could not connect to the qcoder server at ${url.split('?')[0]} (code ${ev.code}); is the qcoder_ds.server extension enabled?`;
        if (!opened) {
          reject(new Error(why));
        }
        this._closed.emit(why);
      };
      socket.onerror = () => {
        // onclose follows with the code; nothing to add here.
      };
    });
    return this._opening;
  }

  private _settings: ServerConnection.ISettings;
  private _socket: WebSocket | null = null;
  private _opening: Promise<WebSocket> | null = null;
  private _event = new Signal<this, ServerEvent>(this);
  private _closed = new Signal<this, string>(this);
}
