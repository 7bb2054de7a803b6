import '@jupyter/chat/style/index.js';
import './base.css';
