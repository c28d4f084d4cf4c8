// Copied as written: *.js is not templated
export const App = () => <div style={{ margin: 0 }}>{"{{ STDID }}"}</div>;
