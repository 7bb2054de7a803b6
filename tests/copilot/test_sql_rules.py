"""Each SQL rule alone, on its own fixture table, and the rules together through the pipeline.

A table row is (request, SQL) -> (the SQL the rule returns, or None when it leaves the query
alone; the issue messages it reports), on the schema and data of ``DB``, in the manner of
sqlglot's ``tests/fixtures/optimizer/<rule>.sql``. The rules' end-to-end behaviour on Spider
is pinned by ``benchmarks/sql_rules_replay.py``.
"""

import sqlite3

import pytest
import sqlglot

from copilot.scripted import ScriptedEngine
from qcoder_ds.copilot.context import describe_connection
from qcoder_ds.copilot.pipeline import Copilot, Options
from qcoder_ds.copilot.sandbox import Limits, Sandbox
from qcoder_ds.copilot.sql_rules import RULES, SCOPE_RULES, VALUE_RULES, SqlKind
from qcoder_ds.copilot.sql_rules.base import SqlContext
from qcoder_ds.copilot.sql_rules.engine import report
from qcoder_ds.copilot.sql_rules.lookup import Lookup, filters
from qcoder_ds.copilot.sql_rules.schema_slips import schema_slips
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.copilot.validate_sql import validate_sql

DB = """
    CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT, country TEXT);
    CREATE TABLE orders (order_id INTEGER PRIMARY KEY,
                         customer_id INTEGER REFERENCES customers(customer_id),
                         amount REAL, ordered_on TEXT);
    CREATE TABLE country (Code TEXT PRIMARY KEY, Name TEXT, Continent TEXT);
    CREATE TABLE city (Name TEXT, CountryCode TEXT REFERENCES country(Code));
    CREATE TABLE flights (code TEXT, dest TEXT);
    CREATE TABLE owner (owner_id INTEGER PRIMARY KEY, name TEXT, age INTEGER);
    CREATE TABLE pet (pet_id INTEGER PRIMARY KEY, owner_id INTEGER,
                      pet_type TEXT, pet_age INTEGER);
    CREATE TABLE owns (owner_id INTEGER REFERENCES owner(owner_id),
                       pet_id INTEGER REFERENCES pet(pet_id));
    CREATE TABLE countrylanguage (CountryCode TEXT REFERENCES country(Code), Language TEXT,
                                  IsOfficial TEXT);
    CREATE TABLE person (id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE friend (person_id INTEGER REFERENCES person(id),
                         friend_id INTEGER REFERENCES person(id));
    INSERT INTO customers VALUES (1, 'Ada', 'UK'), (2, 'Linus', 'FI'), (3, 'Grace', 'US');
    INSERT INTO orders VALUES (1, 1, 10.5, '2023-01-02'), (2, 1, 20.0, '2023-02-03'),
                              (3, 2, 7.25, '2023-03-04'), (4, 3, 99.0, '2022-12-31');
    INSERT INTO country VALUES ('NOR', 'Norway', 'Europe'), ('JPN', 'Japan', 'Asia');
    INSERT INTO city VALUES ('Oslo', 'NOR'), ('Bergen', 'NOR'), ('Kyoto', 'JPN');
    INSERT INTO flights VALUES ('F1', ' ATO'), ('F2', 'Aberdeen');
"""


def rule_named(name):
    return next(r for r in RULES + VALUE_RULES if r.kind.value == name)


CASES = {
    'quoted-strings': [
        ('',
         'SELECT name FROM customers WHERE country = "UK"',
         "SELECT name FROM customers WHERE country = 'UK'",
         []),
        ('',
         'SELECT "name" FROM customers',
         None,
         []),
    ],
    'schema-slips': [
        ('',
         'SELECT o.name, orderedOn FROM customers AS c JOIN orders AS o ON c.customer_id = '
         'o.customer_id',
         'SELECT c.name, ordered_on FROM customers AS c JOIN orders AS o ON c.customer_id = '
         'o.customer_id',
         ['fixed from the schema: orderedOn -> ordered_on; o.name -> c.name']),
        ('',
         'SELECT name FROM customers',
         None,
         []),
    ],
    'join-keys': [
        ('',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.order_id = '
         'c.customer_id',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.customer_id = '
         'c.customer_id',
         [
          'matched keys by the foreign key: ON o.order_id = c.customer_id -> ON '
          'o.customer_id = c.customer_id']),
        ('',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON c.customer_id = '
         'c.customer_id',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.customer_id = '
         'c.customer_id',
         [
          'matched keys by the foreign key: ON c.customer_id = c.customer_id -> ON '
          'o.customer_id = c.customer_id']),
        ('',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.order_id = '
         'o.customer_id',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.order_id = '
         'o.customer_id AND o.customer_id = c.customer_id',
         [
          'matched keys by the foreign key: ON o.order_id = o.customer_id -> ON o.order_id = '
          'o.customer_id AND o.customer_id = c.customer_id']),
        ('',
         'SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON c.customer_id = '
         'o.customer_id',
         None,
         []),
        ('',
         'SELECT a.name, b.name FROM customers AS a JOIN customers AS b ON a.country = '
         'b.country',
         None,
         []),
    ],
    'in-keys': [
        ('',
         'SELECT name FROM customers WHERE customer_id NOT IN (SELECT order_id FROM orders '
         'WHERE amount > 50)',
         'SELECT name FROM customers WHERE NOT customer_id IN (SELECT customer_id FROM '
         'orders WHERE amount > 50)',
         [
          'matched keys by the foreign key: (SELECT order_id ...) -> (SELECT customer_id ...)']),
        ('',
         'SELECT Name FROM city WHERE CountryCode IN (SELECT CountryCode FROM country WHERE '
         "Continent = 'Europe')",
         'SELECT Name FROM city WHERE CountryCode IN (SELECT Code FROM country WHERE '
         "Continent = 'Europe')",
         [
          'matched keys by the foreign key: (SELECT CountryCode ...) -> (SELECT Code ...)']),
        ('',
         'SELECT name FROM customers WHERE customer_id IN (SELECT customer_id FROM orders)',
         None,
         []),
    ],
    'unlinked-joins': [
        ('',
         'SELECT COUNT(*) FROM customers AS a JOIN customers AS b ON a.customer_id = '
         'a.customer_id',
         'SELECT COUNT(*) FROM customers AS a',
         [
          'dropped joined table(s) that the join condition does not link, which paired every '
          'row with every row: customers']),
        ('',
         "SELECT a.name FROM customers AS a JOIN customers AS b ON a.country = 'UK'",
         "SELECT a.name FROM customers AS a WHERE a.country = 'UK'",
         [
          'dropped joined table(s) that the join condition does not link, which paired every '
          'row with every row: customers']),
        ('',
         'SELECT a.name FROM customers AS a JOIN customers AS b ON a.country = b.country',
         None,
         []),
    ],
    'contradiction': [
        ('',
         "SELECT name FROM customers WHERE country = 'UK' AND country = 'US'",
         None,
         [
          "the WHERE clause can never be true: country = 'UK' AND country = 'US' (a row "
          'holds one value). For rows matching either, use OR or IN; for what has both, '
          'INTERSECT two queries']),
        ('',
         'SELECT name FROM customers WHERE customer_id > 2 AND customer_id <= 2',
         None,
         [
          'the WHERE clause can never be true: customer_id > 2 AND customer_id <= 2 (a row '
          'holds one value). For rows matching either, use OR or IN; for what has both, '
          'INTERSECT two queries']),
        ('',
         'SELECT name FROM customers WHERE customer_id >= 2 AND customer_id <= 2',
         None,
         []),
        ('',
         "SELECT name FROM customers WHERE country = 'UK' OR country = 'US'",
         None,
         []),
    ],
    'anti-join': [
        ('Which countries have no city called Oslo?',
         "SELECT T1.Name FROM country AS T1 JOIN city AS T2 ON T1.Code = T2.CountryCode "
         "WHERE T2.Name <> 'Oslo'",
         None,
         [
          "the request says 'not', but T2.Name <> 'Oslo' (on city, which holds many rows per "
          "country row): a row passes as soon as one of its joined rows differs. Keep the rows "
          "that have none: WHERE key NOT IN (SELECT key FROM that table WHERE column = value), "
          "or EXCEPT"]),
        ("Names of customers who didn't order 10.5",
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'WHERE o.amount != 10.5',
         None,
         [
          "the request says 'not', but o.amount <> 10.5 (on orders, which holds many rows per "
          "customers row): a row passes as soon as one of its joined rows differs. Keep the "
          "rows that have none: WHERE key NOT IN (SELECT key FROM that table WHERE column = "
          "value), or EXCEPT"]),
        ('Which owners do not have a dog?',  # many pets per owner through the link table
         "SELECT T1.name FROM owner AS T1 JOIN owns AS T2 ON T1.owner_id = T2.owner_id "
         "JOIN pet AS T3 ON T2.pet_id = T3.pet_id WHERE T3.pet_type <> 'dog'",
         None,
         [
          "the request says 'not', but T3.pet_type <> 'dog' (on pet, which holds many rows "
          "per owner row through owns): a row passes as soon as one of its joined rows "
          "differs. Keep the rows that have none: WHERE key NOT IN (SELECT key FROM that "
          "table WHERE column = value), or EXCEPT"]),
        ('Which countries have a city other than Oslo?',  # no negation asked
         "SELECT T1.Name FROM country AS T1 JOIN city AS T2 ON T1.Code = T2.CountryCode "
         "WHERE T2.Name <> 'Oslo'",
         None,
         []),
        ('Cities not in Norway',  # one country per city: <> on it is right
         "SELECT T2.Name FROM city AS T2 JOIN country AS T1 ON T1.Code = T2.CountryCode "
         "WHERE T1.Name <> 'Norway'",
         None,
         []),
        ('Which countries have no city called Oslo?',
         "SELECT Name FROM country WHERE Code NOT IN (SELECT CountryCode FROM city WHERE "
         "Name = 'Oslo')",
         None,
         []),
    ],
    'both-asked': [
        ('Which countries have both a city called Oslo and a city called Bergen?',
         "SELECT T1.Name FROM country AS T1 JOIN city AS T2 ON T1.Code = T2.CountryCode "
         "WHERE T2.Name = 'Oslo' OR T2.Name = 'Bergen'",
         None,
         ["the request asks for what has both ('both'), but the query tests one row at a "
          "time, and no row is both. Write one query for each part and INTERSECT them, or "
          "GROUP BY the thing asked about and keep the groups that have both (HAVING "
          "COUNT(DISTINCT ...) = 2)"]),
        ('Which continents are shared by Norway and Japan?',  # a self-join on the key
         "SELECT T1.Continent FROM country AS T1 JOIN country AS T2 ON T1.Code = T2.Code "
         "WHERE T1.Name = 'Norway' AND T2.Name = 'Japan'",
         None,
         ["the request asks for what has both ('shared'), but the query tests one row at a "
          "time, and no row is both. Write one query for each part and INTERSECT them, or "
          "GROUP BY the thing asked about and keep the groups that have both (HAVING "
          "COUNT(DISTINCT ...) = 2)"]),
        ('Which countries have both a city called Oslo and a city called Bergen?',
         "SELECT CountryCode FROM city WHERE Name = 'Oslo' INTERSECT "
         "SELECT CountryCode FROM city WHERE Name = 'Bergen'",
         None,
         []),
        ('Which countries have both a city called Oslo and a city called Bergen?',
         "SELECT CountryCode FROM city WHERE Name IN ('Oslo', 'Bergen') GROUP BY CountryCode "
         "HAVING COUNT(DISTINCT Name) = 2",
         None,
         []),
        ('Which continents are shared by Norway and Japan?',  # pairs rows by a shared value
         "SELECT T1.Continent FROM country AS T1 JOIN country AS T2 "
         "ON T1.Continent = T2.Continent WHERE T1.Name = 'Norway' AND T2.Name = 'Japan'",
         None,
         []),
        ('Which countries have both cities and customers?',  # one subquery per part
         "SELECT Name FROM country WHERE Code IN (SELECT CountryCode FROM city) "
         "AND Name IN (SELECT country FROM customers)",
         None,
         []),
        ('Show both the name and the continent of each country.',  # two columns, not two rows
         'SELECT Name, Continent FROM country',
         None,
         []),
    ],
    'comparison-words': [
        ('Which customers placed an order under 20?',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'WHERE o.amount > 20',
         None,
         ["the request says 'under 20', but the query tests o.amount > 20: turn the "
          "comparison around"]),
        ('Orders of more than 20',  # the number on the left
         'SELECT order_id FROM orders WHERE 20 > amount',
         None,
         ["the request says 'more than 20', but the query tests 20 > amount: turn the "
          "comparison around"]),
        ('Orders of more than 20',
         'SELECT order_id FROM orders WHERE amount > 20',
         None,
         []),
        ('Orders of not more than 20',
         'SELECT order_id FROM orders WHERE amount <= 20',
         None,
         []),
        ('Customers whose orders are all under 20',  # NOT turns the inner test around
         'SELECT name FROM customers WHERE NOT customer_id IN '
         '(SELECT customer_id FROM orders WHERE amount >= 20)',
         None,
         []),
        ('Orders over 10 but under 20',  # each number bounded its own way
         'SELECT order_id FROM orders WHERE amount > 10 AND amount < 20',
         None,
         []),
    ],
    'group-filter': [
        ('Which customers have an average order amount greater than 15?',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'WHERE o.amount > 15 GROUP BY c.name',
         None,
         ["the request bounds a value of each group ('average order amount greater'), but "
          "the query bounds single rows in WHERE: compare the aggregate in HAVING (GROUP BY "
          "... HAVING AVG(column) > value)"]),
        ('Which customers have an average order amount greater than 15?',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'GROUP BY c.name HAVING AVG(o.amount) > 15',
         None,
         []),
        ('The total amount per customer of the orders over 15',  # a row filter, asked
         'SELECT customer_id, SUM(amount) FROM orders WHERE amount > 15 GROUP BY customer_id',
         None,
         []),
    ],
    'borrowed-column': [
        ('How old is the youngest dog?',
         "SELECT T2.age FROM pet AS T1 JOIN owner AS T2 ON T1.owner_id = T2.owner_id "
         "WHERE T1.pet_type = 'dog' ORDER BY T2.age LIMIT 1",
         None,
         ["T2.age is owner's age, but pet has its own (pet.pet_age), and the request does not "
          "name owner: read the attribute from the table the request is about"]),
        ('How old is the youngest owner of a dog?',  # the owner is named: their age is meant
         "SELECT T2.age FROM pet AS T1 JOIN owner AS T2 ON T1.owner_id = T2.owner_id "
         "WHERE T1.pet_type = 'dog' ORDER BY T2.age LIMIT 1",
         None,
         []),
        ('How old is the youngest dog?',
         "SELECT T1.pet_age FROM pet AS T1 JOIN owner AS T2 ON T1.owner_id = T2.owner_id "
         "WHERE T1.pet_type = 'dog' ORDER BY T1.pet_age LIMIT 1",
         None,
         []),
        ('How old is the youngest dog?',  # T2 in the subquery is another table than outside
         "SELECT T1.pet_age FROM pet AS T1 JOIN owner AS T2 ON T1.owner_id = T2.owner_id "
         "WHERE T1.pet_age = (SELECT MIN(T2.age) FROM customers AS T2)",
         None,
         []),
        ('Names of the pets of each type',  # name and type are every table's words
         "SELECT T2.name FROM pet AS T1 JOIN owner AS T2 ON T1.owner_id = T2.owner_id",
         None,
         []),
    ],
    'echoes-filter': [
        ("Who are Ada's orders for?",
         "SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id "
         "WHERE c.name = 'Ada'",
         None,
         ["the query selects only c.name, which its WHERE clause sets to the request's own "
          "value, so it can only return that value. Select what the request asks about "
          "(another column, or the rows of a joined table)"]),
        ("What country is Ada from?",
         "SELECT country FROM customers WHERE name = 'Ada'",
         None,
         []),
        ("Customers from the UK and their country",  # another column beside it
         "SELECT name, country FROM customers WHERE country = 'UK'",
         None,
         []),
    ],
    'join-itself': [
        ('How many flights does each customer have?',
         'SELECT c.name, COUNT(*) FROM customers AS c JOIN flights AS f ON f.code = f.code '
         'GROUP BY c.name',
         None,
         ['ON f.code = f.code compares a column with itself, so every row pairs with every '
          'row of the other table. Join on the columns that link the two tables; where no '
          'column of one refers to the other, join the table that links them too']),
        ('How many orders does each customer have?',
         'SELECT c.name, COUNT(*) FROM customers AS c JOIN orders AS o '
         'ON c.customer_id = o.customer_id GROUP BY c.name',
         None,
         []),
    ],
    'count-measure': [
        ('How much did customers order in all?',
         'SELECT COUNT(o.amount) FROM orders AS o',
         None,
         ['COUNT(o.amount) counts the rows that have a o.amount, not the amount: to add the '
          'amounts up use SUM(o.amount); to count rows, COUNT(*)']),
        ('How many orders?', 'SELECT COUNT(*) FROM orders', None, []),
        ('How many customers ordered?',  # a key
         'SELECT COUNT(DISTINCT customer_id) FROM orders', None, []),
        ('How many customers ordered?',  # a key, counted with repeats: not this rule's
         'SELECT COUNT(customer_id) FROM orders', None, []),
        ('How many different amounts?', 'SELECT COUNT(DISTINCT amount) FROM orders', None, []),
    ],
    'inner-is-null': [
        ('Which customers have no orders?',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'WHERE o.order_id IS NULL',
         None,
         ['o.order_id IS NULL tests a table joined with an inner join, which keeps only rows '
          'that have a match, so nothing missing is left to find. Use NOT IN (SELECT key FROM '
          'that table), or a LEFT JOIN']),
        ('Which customers have no orders?',
         'SELECT c.name FROM customers AS c LEFT JOIN orders AS o '
         'ON c.customer_id = o.customer_id WHERE o.order_id IS NULL',
         None,
         []),
        ('Customers whose country is not known',  # the FROM table's own column
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id '
         'WHERE c.country IS NULL',
         None,
         []),
        ('Orders with a date',
         'SELECT o.order_id FROM customers AS c JOIN orders AS o '
         'ON c.customer_id = o.customer_id WHERE NOT o.ordered_on IS NULL',
         None,
         []),
    ],
    'unnamed-key': [
        ('How many orders does Ada have?',
         'SELECT COUNT(*) FROM orders WHERE customer_id = 1',
         None,
         ['customer_id = 1 compares a key with a number the request does not give: filter on '
          'what the request names (join the table that holds it), not on an id copied from '
          'the data']),
        ('How many orders does customer 1 have?',
         'SELECT COUNT(*) FROM orders WHERE customer_id = 1',
         None,
         []),
        ('Orders of 20 or more',  # not a key
         'SELECT order_id FROM orders WHERE amount = 20',
         None,
         []),
    ],
    'unread-table': [
        ('How many orders does each country have?',
         'SELECT country, COUNT(*) FROM customers GROUP BY country',
         None,
         ['the request is about orders (table orders), which the query never reads: join it '
          'through its foreign key, and count or filter its rows']),
        ('How many cities does each country have?',
         'SELECT Name FROM country',
         None,
         ['the request is about cities (table city), which the query never reads: join it '
          'through its foreign key, and count or filter its rows']),
        ('How many orders does each customer have?',  # orders holds the customers' key
         'SELECT customer_id, COUNT(*) FROM orders GROUP BY customer_id',
         None,
         []),
        ('Which countries have flights?',  # no foreign key links flights to country
         'SELECT Name FROM country',
         None,
         []),
        ('How many orders does each customer have?',
         'SELECT T1.name, COUNT(*) FROM customers AS T1 JOIN orders AS T2 '
         'ON T1.customer_id = T2.customer_id GROUP BY T1.name',
         None,
         []),
    ],
    'flag-column': [
        ('What is the official language of Norway?',
         "SELECT Language FROM countrylanguage WHERE CountryCode = 'NOR'",
         None,
         ["the request asks for what is official, but the query never tests "
          "countrylanguage.IsOfficial: add the condition on it (such a column holds 'T'/'F', "
          "1/0 or the like: look at its values)"]),
        ('What is the official language of Norway?',
         "SELECT Language FROM countrylanguage WHERE CountryCode = 'NOR' AND IsOfficial = 'T'",
         None,
         []),
        ('Which languages of Norway are not official?',  # negated: either way may answer
         "SELECT Language FROM countrylanguage WHERE CountryCode = 'NOR'",
         None,
         []),
        ('Which languages are spoken in Norway?',
         "SELECT Language FROM countrylanguage WHERE CountryCode = 'NOR'",
         None,
         []),
    ],
    'link-direction': [
        ('What are the names of people who have friends?',
         'SELECT name FROM person WHERE id IN (SELECT friend_id FROM friend)',
         None,
         ['the request is about who has the link, but the query reads only friend.friend_id; '
          'a row of friend says person_id has friend_id, so who has them is '
          'friend.person_id: match the request\'s subject on that column']),
        ('How many friends does Ada have?',
         "SELECT COUNT(*) FROM friend AS f JOIN person AS p ON f.friend_id = p.id "
         "WHERE p.name = 'Ada'",
         None,
         ['the request is about who has the link, but the query reads only friend.friend_id; '
          'a row of friend says person_id has friend_id, so who has them is '
          'friend.person_id: match the request\'s subject on that column']),
        ('What are the names of people who have friends?',
         'SELECT name FROM person WHERE id IN (SELECT person_id FROM friend)',
         None,
         []),
        ('Who is a friend of Ada?',  # the other side is asked for
         "SELECT p.name FROM friend AS f JOIN person AS p ON f.friend_id = p.id",
         None,
         []),
        ('Whose names are listed?',
         'SELECT name FROM person WHERE id IN (SELECT friend_id FROM friend)',
         None,
         []),
    ],
    'sum-for-count': [
        ('Which country has the largest number of cities?',
         'SELECT country FROM customers GROUP BY country ORDER BY SUM(customer_id) DESC LIMIT 1',
         None,
         ["the query adds up SUM(customer_id) for 'number of cities': a sum of another column "
          "does not count the things the request counts; count them (COUNT(*), or "
          "COUNT(DISTINCT ...))"]),
        ('How many orders does Ada have?',
         "SELECT SUM(amount) FROM orders JOIN customers USING (customer_id) WHERE name = 'Ada'",
         None,
         ["the query adds up SUM(amount) for 'How many orders': a sum of another column does "
          "not count the things the request counts; count them (COUNT(*), or "
          "COUNT(DISTINCT ...))"]),
        ('What is the total amount of orders?',  # amount is the column summed
         'SELECT SUM(amount) FROM orders',
         None,
         []),
        ('How many people ordered, in all?',  # people: no table or text column
         'SELECT SUM(amount) FROM orders',
         None,
         []),
        ('How many orders per customer?',
         'SELECT customer_id, COUNT(*) FROM orders GROUP BY customer_id',
         None,
         []),
    ],
    'outer-pick': [
        ('',
         'SELECT Code FROM country WHERE Name IN (SELECT Continent FROM city)',
         None,
         [
          'the subquery SELECT Continent FROM city picks a column city does not have, so SQL '
          "takes Continent from the outer row and the comparison holds for every row; city's "
          "columns are ['CountryCode', 'Name']"]),
        ('',
         'SELECT Code FROM country WHERE Name IN (SELECT Name FROM city)',
         None,
         []),
    ],
    'unused-joins': [
        ('names of UK customers',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = '
         "o.customer_id WHERE c.country = 'UK'",
         "SELECT c.name FROM customers AS c WHERE c.country = 'UK'",
         [
          'dropped joined table(s) that nothing uses and the request does not mention: orders']),
        ('every customer name',
         'SELECT c.name FROM orders AS o JOIN customers AS c ON o.customer_id = c.customer_id',
         'SELECT c.name FROM customers AS c',
         [
          'dropped joined table(s) that nothing uses and the request does not mention: orders']),
        ('names of customers with orders',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id',
         None,
         []),
        ('the number of customers in each country',
         'SELECT c.country, COUNT(c.customer_id) FROM customers AS c JOIN orders AS o ON '
         'c.customer_id = o.customer_id GROUP BY c.country',
         'SELECT c.country, COUNT(c.customer_id) FROM customers AS c GROUP BY c.country',
         [
          'dropped joined table(s) that nothing uses and the request does not mention: orders']),
        ('countries with at least two order amounts',
         'SELECT c.country FROM orders AS o JOIN customers AS c ON o.customer_id = '
         'c.customer_id GROUP BY c.country HAVING COUNT(*) >= 2',
         None,
         []),
    ],
    'ranking-column': [
        ('Which country has the most customers?',
         'SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC LIMIT 1',
         'SELECT country FROM customers GROUP BY country ORDER BY COUNT(*) DESC LIMIT 1',
         [
          'dropped COUNT(*) AS n from the result: it only ranks the rows, and the request '
          'asks which, not how many']),
        ('Which country has the most customers, and how many?',
         'SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC LIMIT 1',
         None,
         []),
        ('countries by most customers',
         'SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC',
         None,
         []),
    ],
}

SCOPE_CASES = {
    'respell': [
        ('SELECT orderedOn FROM orders WHERE order_id = 4',
         'SELECT ordered_on FROM orders WHERE order_id = 4',
         ['orderedOn -> ordered_on']),
        ('SELECT COUNT(DISTINCT o.customerid) FROM orders AS o',
         'SELECT COUNT(DISTINCT o.customer_id) FROM orders AS o',
         ['customerid -> customer_id']),
        ('SELECT c.name FROM customers AS c JOIN orders AS o ON c.customerid = o.customer_id',
         None,
         []),
    ],
    'requalify': [
        ('SELECT o.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id',
         'SELECT c.name FROM customers AS c JOIN orders AS o ON c.customer_id = o.customer_id',
         ['o.name -> c.name']),
        ('SELECT orders.country FROM customers',
         'SELECT customers.country FROM customers',
         ['orders.country -> customers.country']),
        ('SELECT o.country, o.amount FROM orders AS o',
         None,
         []),
    ],
    'swap_table': [
        ("SELECT name, country FROM orders WHERE country = 'UK'",
         "SELECT name, country FROM customers WHERE country = 'UK'",
         ['FROM orders -> FROM customers']),
        ('SELECT name FROM orders',
         None,
         []),
    ],
    'join_referenced': [
        ("SELECT AVG(amount) FROM orders WHERE country = 'UK'",
         'SELECT AVG(orders.amount) FROM orders JOIN customers AS T1 ON orders.customer_id = '
         "T1.customer_id WHERE T1.country = 'UK'",
         ['JOIN customers AS T1 ON orders.customer_id = T1.customer_id (for country)']),
        ("SELECT customer_id, amount FROM orders WHERE country = 'FI'",
         'SELECT orders.customer_id, orders.amount FROM orders JOIN customers AS T1 ON '
         "orders.customer_id = T1.customer_id WHERE T1.country = 'FI'",
         ['JOIN customers AS T1 ON orders.customer_id = T1.customer_id (for country)']),
        ('SELECT name FROM customers WHERE amount > 50',
         None,
         []),
    ],
}

VALUE_CASES = {
    'stray-spaces': [
        ("SELECT COUNT(*) FROM flights WHERE dest = 'ATO'",
         None,
         [
          "flights.dest stores ' ATO' with surrounding spaces, so = 'ATO' matches no row; "
          "TRIM(dest) = 'ATO' would"],
         {}),
        ("SELECT COUNT(*) FROM flights WHERE dest = 'aberdeen'",
         None,
         [],
         {}),
    ],
    'value-spelling': [
        ("SELECT name FROM customers WHERE country = ' uk'",
         None,
         ["value spelled as stored: customers.country ' uk' -> 'UK'"],
         {' uk': 'UK'}),
        ("SELECT COUNT(*) FROM flights WHERE dest = 'ato'",
         None,
         ["value spelled as stored: flights.dest 'ato' -> ' ATO'"],
         {'ato': ' ATO'}),
        ("SELECT name FROM customers WHERE country = 'Mars'",
         None,
         [],
         {}),
    ],
    'value-in-request': [
        # the request names the value the query cut short (its words are in VALUE_REQUESTS)
        ("SELECT COUNT(*) FROM flights WHERE dest = 'Aber'",
         None,
         ["value as the request names it: flights.dest 'Aber' -> 'Aberdeen'"],
         {'Aber': 'Aberdeen'}),
        ("SELECT name FROM customers WHERE country = 'U'",  # one letter: too short to tell
         None,
         [],
         {}),
        ("SELECT name FROM customers WHERE country = 'Mars'",  # the request names no such
         None,
         [],
         {}),
    ],
    'value-holder': [
        ("SELECT name FROM customers WHERE name = 'uk'",
         "SELECT name FROM customers WHERE country = 'UK'",
         [
          "no row of customers.name is 'uk'; compared customers.country instead, which holds "
          'it: name -> country'],
         {}),
        ('SELECT c.name FROM orders AS o JOIN customers AS c ON o.customer_id = '
         "c.customer_id WHERE o.ordered_on = 'UK' AND o.amount < 15",
         'SELECT c.name FROM orders AS o JOIN customers AS c ON o.customer_id = '
         "c.customer_id WHERE c.country = 'UK' AND o.amount < 15",
         [
          "no row of orders.ordered_on is 'UK'; compared customers.country instead, which "
          'holds it: o.ordered_on -> c.country'],
         {}),
        ("SELECT COUNT(*) FROM orders WHERE ordered_on = 'Grace'",
         None,
         [],
         {}),
    ],
    'value-elsewhere': [
        ("SELECT COUNT(*) FROM orders WHERE ordered_on = 'Grace'",
         None,
         [
          "no row of orders.ordered_on is 'Grace'; that value is in customers.name: filter "
          'on that column (join its table if needed)'],
         {}),
        ("SELECT name FROM customers WHERE country = 'Mars'",
         None,
         [],
         {}),
    ],
}



@pytest.fixture(scope="module")
def db():
    conn = sqlite3.connect(":memory:")
    conn.executescript(DB)
    yield conn, describe_connection("conn", conn)
    conn.close()


def one_line(tree):
    return " ".join(tree.sql(dialect="sqlite").split())


def _changed(before, after):
    """The rewritten SQL on one line, or None when the rule left the query as it was."""
    return None if one_line(after) == one_line(before) else one_line(after)


@pytest.mark.parametrize("name,request_text,sql,expected,messages", [
    (name, *case) for name, cases in CASES.items() for case in cases])
def test_each_rule_alone(db, name, request_text, sql, expected, messages):
    rule = rule_named(name)
    _, info = db
    tree = sqlglot.parse_one(sql, read="sqlite")
    out, fixes = rule.apply(tree.copy(), SqlContext(info, request_text))
    assert _changed(tree, out) == expected
    assert [i.message for i in report(rule, fixes)] == messages
    # the schema slips report the kind of the scope rule that made each fix
    assert all(f.kind is rule.kind for f in fixes) or rule.kind is SqlKind.SCHEMA_SLIPS


@pytest.mark.parametrize("name,sql,expected,changes", [
    (name, *case) for name, cases in SCOPE_CASES.items() for case in cases])
def test_each_scope_rule_alone(db, name, sql, expected, changes):
    rule = next(f for f in SCOPE_RULES if f.__name__ == name)
    _, info = db
    tree = sqlglot.parse_one(sql, read="sqlite")
    out, fixes = schema_slips(tree, SqlContext(info), rules=(rule,))
    assert _changed(tree, out) == expected
    assert [f.change for f in fixes] == changes


#: the request a value rule's cases answer, for the rules that read it
VALUE_REQUESTS = {"value-in-request": "How many flights go to Aberdeen, in the UK?"}


@pytest.mark.parametrize("name,sql,expected,messages,respelled", [
    (name, *case) for name, cases in VALUE_CASES.items() for case in cases])
def test_each_value_rule_alone(db, name, sql, expected, messages, respelled):
    rule = rule_named(name)
    conn, info = db
    tree = sqlglot.parse_one(sql, read="sqlite")
    ctx = SqlContext(info, request=VALUE_REQUESTS.get(name), conn=conn,
                     lookup=Lookup(conn, info, 60.0), filter=filters(tree, info)[0])
    out, fixes = rule.apply(tree.copy(), ctx)
    assert _changed(tree, out) == expected
    assert [i.message for i in report(rule, fixes)] == messages
    assert ctx.respell == respelled


def test_every_rule_has_its_fixture_table():
    assert [r.kind.value for r in RULES] == list(CASES)
    assert [r.kind.value for r in VALUE_RULES] == list(VALUE_CASES)
    assert [f.__name__ for f in SCOPE_RULES] == list(SCOPE_CASES)
    assert {r.kind for r in RULES + VALUE_RULES} | {SqlKind.RESPELL, SqlKind.REQUALIFY,
                                                    SqlKind.SWAP_TABLE,
                                                    SqlKind.JOIN_REFERENCED} == set(SqlKind)


def test_a_rewrite_is_kept_only_when_the_query_then_resolves(db):
    # the wrong alias alone is fixable, but `bogus` stays unknown: the half-fixed query is
    # not kept, and the schema's error about the query as written goes to the repair
    _, info = db
    sql = "SELECT o.name, bogus FROM customers AS c JOIN orders AS o " \
          "ON c.customer_id = o.customer_id"
    r = validate_sql(sql, info)
    assert not r.ok and " ".join(r.sql.split()) == sql
    assert [i.kind for i in r.issues] == ["sql"]
    assert "column 'Name' is not in the table it is taken from" in r.issues[0].message


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=8, sample_rows=200))
    yield sb
    sb.close()


def test_the_rules_together_through_the_pipeline(box, shop_db):
    # a double-quoted string (read as SQLite does), a column through the wrong alias, and a
    # count selected only to rank by, in one answer; orders stays joined, since the request
    # names it
    conn, _ = shop_db
    sql = ('SELECT o.country, COUNT(*) AS n FROM customers AS c JOIN orders AS o '
           'ON c.customer_id = o.customer_id WHERE c.name <> "nobody" '
           'GROUP BY o.country ORDER BY n DESC LIMIT 1')
    eng = ScriptedEngine([f"```sql\n{sql}\n```\n"])
    ans = Copilot(eng, box).ask("Which country has the most orders?", {"conn": conn},
                                Options(task=Task.SQL))
    assert ans.ok and ans.repairs == 0
    assert " ".join(ans.sql.split()) == (
        "SELECT c.country FROM customers AS c JOIN orders AS o ON c.customer_id = "
        "o.customer_id WHERE c.name <> 'nobody' GROUP BY c.country ORDER BY COUNT(*) DESC "
        "LIMIT 1")
    assert any("o.country -> c.country" in w for w in ans.warnings)
    assert any("dropped COUNT(*) AS n from the result" in w for w in ans.warnings)
    assert conn.execute(ans.sql).fetchall() == [("UK",)]


def test_a_table_named_as_the_start_of_another_tables_name_is_that_table():
    """"template type" names Ref_Template_Types, not Templates (Spider's cre_Doc_Template_Mgt);
    "templates" alone names Templates."""
    conn = sqlite3.connect(":memory:")
    conn.executescript("""
        CREATE TABLE Ref_Template_Types (Template_Type_Code TEXT PRIMARY KEY, Description TEXT);
        CREATE TABLE Templates (Template_ID INTEGER PRIMARY KEY, Template_Type_Code TEXT
                                REFERENCES Ref_Template_Types(Template_Type_Code));
        CREATE TABLE Documents (Document_ID INTEGER PRIMARY KEY,
                                Template_ID INTEGER REFERENCES Templates(Template_ID));
    """)
    info = describe_connection("conn", conn)
    rule = rule_named("unread-table")

    def found(request, sql):
        _, fixes = rule.apply(sqlglot.parse_one(sql, read="sqlite"), SqlContext(info, request))
        return [f.change for f in fixes]

    types = "SELECT Template_Type_Code, Description FROM Ref_Template_Types"
    assert found("Show all template type codes and descriptions.", types) == []
    assert found("Which template types are used by templates?", types) == [
        "templates (table Templates)"]
    assert found("How many documents use each template type?",
                 "SELECT Template_Type_Code, COUNT(*) FROM Templates GROUP BY 1") == [
        "documents (table Documents)"]
    conn.close()


def test_a_check_that_fails_on_a_query_finds_nothing(db):
    """A check that raises on a query nobody foresaw reports nothing and leaves the query,
    like a rewrite that raises: model output must not cost the user the answer."""
    from qcoder_ds.copilot.sql_rules.base import Rule, State, logic_check
    from qcoder_ds.copilot.sql_rules.engine import apply_rule, resolves

    def boom(tree, ctx):
        raise KeyError("unforeseen")

    rule: Rule = logic_check(SqlKind.UNREAD_TABLE, boom, resolves)
    _, info = db
    state = State(sqlglot.parse_one("SELECT name FROM customers"), SqlContext(info, "names"))
    apply_rule(rule, state)
    assert state.findings == [] and state.tree.sql() == "SELECT name FROM customers"


def test_a_table_named_with_underscores_only_is_never_mentioned():
    from qcoder_ds.copilot.sql_rules.unread_table import mentions

    assert mentions("__").search("any request at all") is None
    assert mentions("poker_player").search("the poker players") is not None
