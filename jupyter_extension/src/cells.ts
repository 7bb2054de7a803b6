/**
 * Putting answers into the notebook. @jupyter/chat's code-block toolbar (insert above /
 * insert below / replace cell) calls an ActiveCellManager; ours writes the cell through the
 * notebook model (not the editor, so it works while the editor is busy) and stores the
 * answer's provenance on the cell under "qcoder", the key `%%qcoder` uses.
 */
import { ActiveCellManager } from '@jupyter/chat';
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { codeKey } from './reducer';

/** The cell metadata key of the magic (magics.py `_insert`). */
export const METADATA_KEY = 'qcoder';

export class QcoderCellManager extends ActiveCellManager {
  constructor(options: { tracker: INotebookTracker; shell: JupyterFrontEnd.IShell }) {
    super(options);
    this._tracker = options.tracker;
  }

  /** File an answer's provenance under its code, so whichever button inserts it stores it. */
  remember(code: string, metadata: { [key: string]: unknown } | null, key = METADATA_KEY): void {
    if (metadata && code.trim()) {
      this._provenance.set(codeKey(code), { key: key || METADATA_KEY, metadata });
    }
  }

  insertAbove(content: string): void {
    void this._put(content, 'above', false);
  }

  insertBelow(content: string): void {
    void this._put(content, 'below', false);
  }

  async replace(content: string): Promise<void> {
    await this._put(content, 'replace', false);
  }

  /** Insert below the active cell and run it (the answer's Run button). */
  async insertBelowAndRun(content: string): Promise<void> {
    await this._put(content, 'below', true);
  }

  private async _put(
    content: string,
    where: 'above' | 'below' | 'replace',
    run: boolean
  ): Promise<void> {
    const panel = this._tracker.currentWidget;
    if (!panel) {
      Notification.warning('qcoder: open a notebook first; there is no notebook to put the cell in');
      return;
    }
    const notebook = panel.content;
    if (where === 'below') {
      NotebookActions.insertBelow(notebook);
    } else if (where === 'above') {
      NotebookActions.insertAbove(notebook);
    }
    const cell = notebook.activeCell;
    if (!cell) {
      return;
    }
    this._write(cell, content);
    if (run) {
      await this._run(panel);
    }
  }

  private _write(cell: Cell, content: string): void {
    const text = content.replace(/\n+$/, '');
    if (cell.model.type !== 'code') {
      // replacing a markdown cell's text with code would leave code that never runs
      cell.model.sharedModel.setSource(text);
      return;
    }
    cell.model.sharedModel.setSource(text);
    const filed = this._provenance.get(codeKey(content));
    if (filed) {
      cell.model.setMetadata(filed.key, filed.metadata);
    } else {
      // code that did not come from an answer (edited, or copied from elsewhere) is not ours
      cell.model.deleteMetadata(METADATA_KEY);
    }
  }

  private async _run(panel: NotebookPanel): Promise<void> {
    await panel.sessionContext.ready;
    await NotebookActions.run(panel.content, panel.sessionContext);
  }

  private _tracker: INotebookTracker;
  private _provenance = new Map<string, { key: string; metadata: { [key: string]: unknown } }>();
}
