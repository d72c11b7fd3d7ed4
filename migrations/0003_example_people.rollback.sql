DROP TABLE example_people;
