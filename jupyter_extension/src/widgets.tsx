/**
 * The panel's own parts around @jupyter/chat's ChatWidget: a header (model picker, queue
 * line, stop, clear, errors) and the Run button under qcoder's answers.
 */
import { IMessageContent, MessageFooterSectionProps } from '@jupyter/chat';
import { ReactWidget } from '@jupyterlab/apputils';
import React, { useEffect, useState } from 'react';

import { requestAPI } from './api';
import { QcoderCellManager } from './cells';
import { QcoderChatModel } from './model';
import { IModelsReply, ISettingsReply } from './protocol';

/** The header above the chat. */
export class QcoderHeader extends ReactWidget {
  constructor(model: QcoderChatModel) {
    super();
    this._model = model;
    this.addClass('jp-qcoder-header');
  }

  render(): JSX.Element {
    return <Header model={this._model} />;
  }

  private _model: QcoderChatModel;
}

function Header(props: { model: QcoderChatModel }): JSX.Element {
  const { model } = props;
  const [models, setModels] = useState<IModelsReply | null>(null);
  const [current, setCurrent] = useState<string>('');
  const [status, setStatus] = useState<string>(model.status);
  const [busy, setBusy] = useState<boolean>(model.busy);
  const [problem, setProblem] = useState<string>('');
  const [path, setPath] = useState<string | null>(model.path);

  useEffect(() => {
    let live = true;
    Promise.all([
      requestAPI<IModelsReply>('models'),
      requestAPI<ISettingsReply>('settings')
    ]).then(
      ([m, s]) => {
        if (live) {
          setModels(m);
          setCurrent(s.model || m.current);
          model.model = s.model || m.current || null;
        }
      },
      (error: Error) => live && setProblem(`could not reach the qcoder server: ${error.message}`)
    );
    const onStatus = () => {
      setStatus(model.status);
      setBusy(model.busy);
      setPath(model.path);
    };
    const onProblem = (_: unknown, line: string) => setProblem(line);
    model.statusChanged.connect(onStatus);
    model.problem.connect(onProblem);
    model.messagesUpdated.connect(onStatus);
    return () => {
      live = false;
      model.statusChanged.disconnect(onStatus);
      model.problem.disconnect(onProblem);
      model.messagesUpdated.disconnect(onStatus);
    };
  }, [model]);

  const choose = async (name: string) => {
    const before = current;
    setCurrent(name);
    try {
      const s = await requestAPI<ISettingsReply>('settings', {
        method: 'PUT',
        body: JSON.stringify({ model: name })
      });
      setCurrent(s.model);
      model.model = s.model;
      setProblem('');
    } catch (error) {
      setCurrent(before);
      setProblem(`could not switch to ${name}: ${(error as Error).message}`);
    }
  };

  const clear = async () => {
    try {
      await model.clearHistory();
      setProblem('');
    } catch (error) {
      setProblem(`could not clear the history: ${(error as Error).message}`);
    }
  };

  const why = models?.models.find(m => m.name === current)?.why ?? '';
  return (
    <div className="jp-qcoder-header-inner">
      <div className="jp-qcoder-row">
        <label className="jp-qcoder-model-label" title={why}>
          Model
          <select
            className="jp-qcoder-model"
            value={current}
            disabled={!models}
            onChange={e => void choose(e.target.value)}
          >
            {!models && <option value="">…</option>}
            {models?.models.map(m => (
              <option key={m.name} value={m.name} title={m.why}>
                {m.name}
                {m.default ? ' (default)' : ''}
                {m.installed ? '' : ' (not installed)'}
              </option>
            ))}
          </select>
        </label>
        <button
          className="jp-qcoder-stop jp-mod-styled jp-mod-warn"
          disabled={!busy}
          title="Stop the queued and running requests"
          onClick={() => model.stop()}
        >
          Stop
        </button>
        <button
          className="jp-qcoder-clear jp-mod-styled"
          title="Clear this notebook's conversation"
          disabled={path === null}
          onClick={() => void clear()}
        >
          Clear
        </button>
      </div>
      <div className="jp-qcoder-row jp-qcoder-context">
        <span className="jp-qcoder-notebook">
          {path ? `Notebook: ${path}` : 'Open a notebook to ask about its data'}
        </span>
        <span className="jp-qcoder-status" aria-live="polite">
          {status}
        </span>
      </div>
      {problem && (
        <div className="jp-qcoder-problem" role="alert">
          {problem}
          <button className="jp-qcoder-dismiss" title="Dismiss" onClick={() => setProblem('')}>
            ×
          </button>
        </div>
      )}
    </div>
  );
}

/** The footer of qcoder's finished answers: Run (insert below and execute) and Insert below. */
export function answerFooter(cells: QcoderCellManager) {
  return function AnswerFooter(props: MessageFooterSectionProps): JSX.Element | null {
    const message = useLiveMessage(props.message);
    const meta = message.metadata?.qcoder;
    if (!meta || meta.status !== 'done' || !meta.answer || !meta.answer.cell.trim()) {
      return null;
    }
    const cell = meta.answer.cell.trim();
    return (
      <div className="jp-qcoder-answer-actions">
        <button
          className="jp-qcoder-insert jp-mod-styled"
          title="Insert the cell below the active cell"
          onClick={() => cells.insertBelow(cell)}
        >
          Insert below
        </button>
        <button
          className="jp-qcoder-run jp-mod-styled jp-mod-accept"
          title="Insert the cell below the active cell and run it"
          onClick={() => void cells.insertBelowAndRun(cell)}
        >
          Run
        </button>
      </div>
    );
  };
}

/** The footer is handed the message object; follow its updates (the answer streams in). */
function useLiveMessage(message: IMessageContent): IMessageContent {
  const live = message as IMessageContent & {
    changed?: { connect: (f: () => void) => void; disconnect: (f: () => void) => void };
    content?: IMessageContent;
  };
  const [content, setContent] = useState<IMessageContent>(live.content ?? message);
  useEffect(() => {
    const changed = () => setContent({ ...(live.content ?? message) });
    live.changed?.connect(changed);
    changed();
    return () => live.changed?.disconnect(changed);
  }, [message]);
  return content;
}
