/**
 * qcoder's chat in JupyterLab's sidebar: @jupyter/chat's ChatWidget on a model fed by the
 * qcoder server extension, with explain / fix commands on notebook cells.
 */
import {
  ChatWidget,
  InputToolbarRegistry,
  MessageFooterRegistry
} from '@jupyter/chat';
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IThemeManager } from '@jupyterlab/apputils';
import { Cell, CodeCell } from '@jupyterlab/cells';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { LabIcon } from '@jupyterlab/ui-components';
import { Panel } from '@lumino/widgets';

import { ChatConnection } from './api';
import { QcoderCellManager } from './cells';
import { QcoderChatModel } from './model';
import { ICellRef } from './protocol';
import { defaultRequest } from './reducer';
import { QcoderHeader, answerFooter } from './widgets';

const PLUGIN_ID = 'qcoder-ds:plugin';

export namespace CommandIDs {
  export const open = 'qcoder:open-chat';
  export const explain = 'qcoder:explain-cell';
  export const fix = 'qcoder:fix-cell';
}

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
  '<path class="jp-icon3" fill="#616161" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm4.2 5.6L5.8 11l2.4 2.4 1-1L7.8 11l1.4-1.4-1-1zm7.6 0-1 1 1.4 1.4-1.4 1.4 1 1 2.4-2.4-2.4-2.4zM13.1 7l-3.2 8h1.5l3.2-8h-1.5z"/>' +
  '</svg>';

export const qcoderIcon = new LabIcon({ name: 'qcoder-ds:chat', svgstr: ICON_SVG });

/** The error output of a code cell as text (ename: evalue + traceback), or null. */
function cellError(cell: Cell): string | null {
  if (!(cell instanceof CodeCell)) {
    return null;
  }
  const outputs = cell.model.outputs;
  for (let i = 0; i < outputs.length; i++) {
    const out = outputs.get(i).toJSON() as {
      output_type?: string;
      ename?: string;
      evalue?: string;
      traceback?: string[];
    };
    if (out.output_type === 'error') {
      // tracebacks carry ANSI colours
      // eslint-disable-next-line no-control-regex
      const tb = (out.traceback ?? []).join('\n').replace(/\u001b\[[0-9;]*m/g, '');
      return tb || `${out.ename}: ${out.evalue}`;
    }
  }
  return null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The qcoder chat sidebar: ask the local copilot, insert its checked cells.',
  autoStart: true,
  requires: [INotebookTracker, IRenderMimeRegistry],
  optional: [ICommandPalette, IThemeManager, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    rmRegistry: IRenderMimeRegistry,
    palette: ICommandPalette | null,
    themeManager: IThemeManager | null,
    restorer: ILayoutRestorer | null
  ) => {
    const cells = new QcoderCellManager({ tracker, shell: app.shell });
    const model = new QcoderChatModel({
      connection: new ChatConnection(),
      cellManager: cells,
      activeCellManager: cells,
      commands: app.commands,
      config: {
        sendWithShiftEnter: false,
        unreadNotifications: false,
        enableCodeToolbar: true,
        sendTypingNotification: false
      },
      context: () => {
        const panel = tracker.currentWidget;
        return {
          path: panel ? panel.context.path : null,
          kernelId: panel?.sessionContext.session?.kernel?.id ?? null
        };
      }
    });

    const footers = new MessageFooterRegistry();
    footers.addSection({ component: answerFooter(cells), position: 'right' });
    const chat = new ChatWidget({
      model,
      rmRegistry,
      themeManager,
      inputToolbarRegistry: InputToolbarRegistry.defaultToolbarRegistry(),
      messageFooterRegistry: footers,
      welcomeMessage:
        'Ask about the data in the open notebook, e.g. *plot the monthly average of `temp` ' +
        'per city*. Answers are checked against your live DataFrames before they are shown; ' +
        '**Insert below** or **Run** puts the cell under the active cell.\n\n',
      area: 'sidebar'
    });
    chat.addClass('jp-qcoder-chat');

    // a plain Panel laid out by CSS (flex column): the header takes the height it needs
    const panel = new Panel();
    panel.id = 'qcoder-chat';
    panel.addClass('jp-qcoder-panel');
    panel.title.icon = qcoderIcon;
    panel.title.caption = 'qcoder chat';
    const header = new QcoderHeader(model);
    panel.addWidget(header);
    panel.addWidget(chat);
    app.shell.add(panel, 'right', { rank: 100 });
    restorer?.add(panel, 'qcoder-chat');

    // one conversation per notebook: follow the notebook in front
    const follow = () => {
      const path = tracker.currentWidget?.context.path ?? null;
      if (path !== model.path) {
        void model.showNotebook(path);
      }
    };
    tracker.currentChanged.connect(follow);
    tracker.widgetAdded.connect((_, nb) => {
      // a renamed notebook keeps its conversation under the new path on the server side
      nb.context.pathChanged.connect(follow);
    });
    void app.restored.then(follow);

    const openChat = () => {
      app.shell.activateById(panel.id);
    };

    /** The cell a command acts on: the one right-clicked or the active one. */
    const targetCell = (): { cell: Cell; ref: ICellRef } | null => {
      const nb = tracker.currentWidget;
      const cell = tracker.activeCell;
      if (!nb || !cell) {
        return null;
      }
      const index = nb.content.widgets.indexOf(cell);
      return {
        cell,
        ref: {
          source: cell.model.sharedModel.getSource(),
          cell_type: cell.model.type,
          index,
          error: cellError(cell)
        }
      };
    };

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open the qcoder chat',
      icon: qcoderIcon,
      execute: openChat
    });
    app.commands.addCommand(CommandIDs.explain, {
      label: 'Explain this cell (qcoder)',
      caption: 'Ask qcoder to explain the active cell in the chat',
      icon: qcoderIcon,
      isEnabled: () => {
        const t = targetCell();
        return !!t && !!t.ref.source.trim();
      },
      execute: async () => {
        const t = targetCell();
        if (!t) {
          return;
        }
        openChat();
        const selection = selectedText(t.cell);
        await model.ask(defaultRequest('explain'), 'explain', t.ref, selection);
      }
    });
    app.commands.addCommand(CommandIDs.fix, {
      label: 'Fix this error (qcoder)',
      caption: 'Ask qcoder to fix the error the active cell raised',
      icon: qcoderIcon,
      isEnabled: () => {
        const t = targetCell();
        return !!t && t.ref.error !== null;
      },
      execute: async () => {
        const t = targetCell();
        if (!t) {
          return;
        }
        openChat();
        await model.ask(defaultRequest('fix'), 'fix', t.ref, null);
      }
    });

    app.contextMenu.addItem({
      command: CommandIDs.explain,
      selector: '.jp-Notebook .jp-Cell',
      rank: 20
    });
    app.contextMenu.addItem({
      command: CommandIDs.fix,
      selector: '.jp-Notebook .jp-CodeCell',
      rank: 21
    });
    if (palette) {
      for (const command of [CommandIDs.open, CommandIDs.explain, CommandIDs.fix]) {
        palette.addItem({ command, category: 'qcoder' });
      }
    }
    // the fix button follows the active cell's error state
    tracker.activeCellChanged.connect(() => app.commands.notifyCommandChanged(CommandIDs.fix));
    cells.activeCellErrorChanged.connect(() =>
      app.commands.notifyCommandChanged(CommandIDs.fix)
    );
  }
};

function selectedText(cell: Cell): string | null {
  const editor = cell.editor;
  if (!editor) {
    return null;
  }
  const sel = editor.getSelection();
  const start = editor.getOffsetAt(sel.start);
  const end = editor.getOffsetAt(sel.end);
  if (start === end) {
    return null;
  }
  const source = editor.model.sharedModel.getSource();
  return source.slice(Math.min(start, end), Math.max(start, end));
}

export default plugin;
